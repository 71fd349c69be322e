//! The shipped VM layouts (configs/*.dts) parse, pass every check, and say what their
//! scenarios need; the committed blobs are what dtc makes of the sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_devices::vmconfig::{BootProtocol, CpuModel, DeviceKind, VirtioKind, VmLayout};

const DEFAULT: &[u8] = include_bytes!("fixtures/default.dtb");
const GUESTS: &[u8] = include_bytes!("fixtures/guests.dtb");
const ISOLATION: &[u8] = include_bytes!("fixtures/isolation.dtb");
const DEDUP: &[u8] = include_bytes!("fixtures/dedup.dtb");
const BALLOON: &[u8] = include_bytes!("fixtures/balloon.dtb");
const SWAP: &[u8] = include_bytes!("fixtures/swap.dtb");
const IDLE: &[u8] = include_bytes!("fixtures/idle.dtb");
const STRESS: &[u8] = include_bytes!("fixtures/stress.dtb");
const DEMO: &[u8] = include_bytes!("fixtures/demo.dtb");
const MEMGUEST: &[u8] = include_bytes!("fixtures/memguest.dtb");
const MEMGUEST_SMOKE: &[u8] = include_bytes!("fixtures/memguest-smoke.dtb");
const GUESTS_VCPUS: &[u8] = include_bytes!("fixtures/guests-vcpus.dtb");
const DEDUP_VCPUS: &[u8] = include_bytes!("fixtures/dedup-vcpus.dtb");
const LIMITS: &[u8] = include_bytes!("fixtures/limits.dtb");
const LIMITS_SMALL: &[u8] = include_bytes!("fixtures/limits-small.dtb");
const LIMITS_SWAP: &[u8] = include_bytes!("fixtures/limits-swap.dtb");
const WATCHDOG: &[u8] = include_bytes!("fixtures/watchdog.dtb");
const WATCHDOG_CONSOLE: &[u8] = include_bytes!("fixtures/watchdog-console.dtb");
const LINUX: &[u8] = include_bytes!("fixtures/linux.dtb");
const LINUX_MIXED: &[u8] = include_bytes!("fixtures/linux-mixed.dtb");
const LINUX_REBOOT: &[u8] = include_bytes!("fixtures/linux-reboot.dtb");
const LINUX_DEDUP: &[u8] = include_bytes!("fixtures/linux-dedup.dtb");
const LINUX_BALLOON: &[u8] = include_bytes!("fixtures/linux-balloon.dtb");

/// Every shipped layout, by the name of its source in configs/.
const ALL: &[(&str, &[u8])] = &[
    ("default", DEFAULT),
    ("guests", GUESTS),
    ("isolation", ISOLATION),
    ("dedup", DEDUP),
    ("balloon", BALLOON),
    ("swap", SWAP),
    ("idle", IDLE),
    ("stress", STRESS),
    ("demo", DEMO),
    ("memguest", MEMGUEST),
    ("memguest-smoke", MEMGUEST_SMOKE),
    ("guests-vcpus", GUESTS_VCPUS),
    ("dedup-vcpus", DEDUP_VCPUS),
    ("limits", LIMITS),
    ("limits-small", LIMITS_SMALL),
    ("limits-swap", LIMITS_SWAP),
    ("watchdog", WATCHDOG),
    ("watchdog-console", WATCHDOG_CONSOLE),
    ("linux", LINUX),
    ("linux-mixed", LINUX_MIXED),
    ("linux-reboot", LINUX_REBOOT),
    ("linux-dedup", LINUX_DEDUP),
    ("linux-balloon", LINUX_BALLOON),
];

/// Images the scenarios use (the firmware checks against the ones it carries).
const IMAGES: &[&str] = &["testguest", "hostile", "memguest", "balloonguest", "initrd"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_layout_parses_and_fits_a_one_cpu_host() {
    for (name, blob) in ALL {
        let layout = VmLayout::parse(blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Affinity, where given, names CPU 0 only: every layout runs on --smp 1.
        assert_eq!(layout.check_host(IMAGES, 1), Ok(()), "{name}");
        for vm in &layout.vms {
            assert!(
                vm.devices
                    .iter()
                    .any(|d| matches!(d.kind, DeviceKind::Uart16550 { .. })),
                "{name}: {} has no console",
                vm.name
            );
        }
    }
}

#[test]
fn memory_service_layouts_have_what_their_scenarios_need() {
    let ram = |blob| -> Vec<u64> {
        let layout = VmLayout::parse(blob).unwrap();
        layout.vms.iter().map(|vm| vm.ram.size_bytes).collect()
    };
    // swap: more guest RAM than the guest pool it asks for.
    let pool_mib = VmLayout::parse(SWAP)
        .unwrap()
        .services
        .guest_pool_mib
        .expect("swap sets /services/guest-pool-mib");
    assert!(ram(SWAP).iter().sum::<u64>() > u64::from(pool_mib) << 20);
    // idle: one VM.
    assert_eq!(ram(IDLE).len(), 1);
    // stress: at least 4 memguest VMs that may all share pages and a balloon guest.
    let stress = VmLayout::parse(STRESS).unwrap();
    let memguests: Vec<usize> = (0..stress.vms.len())
        .filter(|&i| stress.vms[i].image == "memguest")
        .collect();
    assert!(memguests.len() >= 4);
    assert!(memguests
        .iter()
        .all(|&a| memguests.iter().all(|&b| stress.may_share_pages(a, b))));
    assert!(stress.vms.iter().any(|vm| vm.image == "balloonguest"));
    assert!(stress.services.dedup);
    // A pool no larger than the guests' RAM, so swap has to work.
    let stress_pool = stress
        .services
        .guest_pool_mib
        .expect("stress sizes its pool");
    assert!(ram(STRESS).iter().sum::<u64>() >= u64::from(stress_pool) << 20);
    // balloon: a VM with a balloon device to inflate.
    let balloon = VmLayout::parse(BALLOON).unwrap();
    assert!(balloon.vms.iter().all(|vm| vm
        .devices
        .iter()
        .any(|d| d.kind == DeviceKind::VirtioMmio(VirtioKind::Balloon))));
    // ... and one whose target starts from the layout (`balloon-target-mib`).
    assert!(balloon.vms.iter().any(|vm| vm.balloon_target_mib.is_some()));
    // demo: a trust group and a VM outside it.
    let demo = VmLayout::parse(DEMO).unwrap();
    let solo = demo.find("batch").unwrap();
    assert!(demo.services.dedup);
    assert!(demo.may_share_pages(0, 1));
    assert!(!demo.may_share_pages(0, solo));
}

#[test]
fn default_blob_equals_the_builtin_default() {
    let parsed = VmLayout::parse(DEFAULT).unwrap();
    assert_eq!(parsed, VmLayout::builtin_default());
}

#[test]
fn guests_layout_runs_anywhere() {
    let layout = VmLayout::parse(GUESTS).unwrap();
    assert!(layout.vms.len() >= 3);
    // No affinity, so the same layout serves --smp 1 and --smp 4.
    assert_eq!(layout.check_host(IMAGES, 1), Ok(()));
    assert!(layout.vms.iter().all(|vm| vm.affinity.is_none()));
    for vm in &layout.vms {
        assert!(matches!(
            vm.devices[0].kind,
            DeviceKind::Uart16550 { stride: 1 }
        ));
    }
}

#[test]
fn isolation_layout_has_a_hostile_vm_with_a_read_only_slot() {
    let layout = VmLayout::parse(ISOLATION).unwrap();
    assert_eq!(layout.check_host(IMAGES, 1), Ok(()));
    let hostile = &layout.vms[layout.find("hostile").unwrap()];
    assert_eq!(hostile.image, "hostile");
    assert!(hostile.rom.is_some());
    let victim = layout.find("victim").unwrap();
    assert!(!layout.may_share_pages(layout.find("hostile").unwrap(), victim));
}

#[test]
fn dedup_layout_has_one_trust_group_and_an_outsider() {
    let layout = VmLayout::parse(DEDUP).unwrap();
    assert_eq!(layout.check_host(IMAGES, 1), Ok(()));
    let loner = layout.find("loner").unwrap();
    let group: Vec<usize> = (0..layout.vms.len()).filter(|&i| i != loner).collect();
    assert!(group.len() >= 4);
    for &a in &group {
        assert!(group.iter().all(|&b| layout.may_share_pages(a, b)));
        assert!(!layout.may_share_pages(a, loner));
    }
    assert!(layout.services.dedup, "the dedup layout turns dedup on");
    for vm in &layout.vms {
        assert!(vm
            .devices
            .iter()
            .any(|d| d.kind == DeviceKind::VirtioMmio(VirtioKind::Balloon)));
    }
}

/// The Linux layouts: the VM `linux` sees a MIPS32 CPU, boots by UHI with a console on the
/// command line, and takes its kernel from the initrd; the mixed one adds three test guests
/// that keep the default CPU and boot protocol.
#[test]
fn linux_layouts_describe_a_mips32_uhi_guest() {
    for blob in [LINUX, LINUX_MIXED, LINUX_REBOOT, LINUX_BALLOON] {
        let layout = VmLayout::parse(blob).unwrap();
        let linux = &layout.vms[layout.find("linux").unwrap()];
        assert_eq!(linux.image, "initrd");
        assert_eq!(linux.cpu, CpuModel::Mips32R2);
        assert_eq!(linux.boot, BootProtocol::Uhi);
        assert!(linux
            .bootargs
            .as_deref()
            .is_some_and(|args| args.starts_with("console=ttyS0")));
        for vm in layout.vms.iter().filter(|vm| vm.name != "linux") {
            assert_eq!((vm.cpu, vm.boot), (CpuModel::Mips64R2, BootProtocol::None));
            assert_eq!(vm.image, "testguest");
        }
    }
    assert_eq!(VmLayout::parse(LINUX_MIXED).unwrap().vms.len(), 4);
    // Four Linux VMs in one trust group, dedup on.
    let dedup = VmLayout::parse(LINUX_DEDUP).unwrap();
    assert!(dedup.services.dedup);
    assert_eq!(dedup.vms.len(), 4);
    for vm in &dedup.vms {
        assert_eq!(
            (vm.cpu, vm.boot, vm.trust_group),
            (CpuModel::Mips32R2, BootProtocol::Uhi, Some(1))
        );
        assert_eq!(vm.image, "initrd");
    }
    assert!((0..4).all(|a| (0..4).all(|b| dedup.may_share_pages(a, b))));
    let reboot = VmLayout::parse(LINUX_REBOOT).unwrap();
    assert_eq!(
        reboot.vms[0].bootargs.as_deref(),
        Some("console=ttyS0 mipsvisor.reboot")
    );
}

/// The `limits` layouts: one VM that touches all its RAM (`hog` without an argument)
/// beside VMs that touch a bounded part, more guest RAM than the pools they run on
/// (`--mem 128`: about 95 MiB; `--mem 64`: about 31 MiB), and the share each relies on.
#[test]
fn limits_layouts_overcommit_with_one_hog() {
    use hv_devices::vmconfig::{MemShare, Workload};
    for (name, blob, pool_mib, smallest_vms) in [
        ("limits", LIMITS, 95u64, 6),
        ("limits-small", LIMITS_SMALL, 31, 16),
        ("limits-swap", LIMITS_SWAP, 40, 4),
    ] {
        let layout = VmLayout::parse(blob).unwrap();
        assert!(layout.vms.len() >= smallest_vms, "{name}");
        let hogs: Vec<_> = layout
            .vms
            .iter()
            .filter(|vm| {
                vm.workload
                    .is_some_and(|w| w.kind == Workload::Hog && w.arg.is_none())
            })
            .collect();
        assert_eq!(hogs.len(), 1, "{name}: one VM touches all its RAM");
        let ram_mib: u64 = layout.vms.iter().map(|vm| vm.ram.size_bytes >> 20).sum();
        assert!(ram_mib > pool_mib, "{name}: does not overcommit");
        // Reservations are admitted against the pool.
        assert_eq!(
            layout.check_reservations(MemShare::pages(pool_mib as u32)),
            Ok(()),
            "{name}"
        );
        // What the others touch fits in what they are guaranteed or limited to.
        for vm in layout
            .vms
            .iter()
            .filter(|vm| vm.workload.is_some_and(|w| w.arg.is_some()))
        {
            let touched_mib = vm.workload.unwrap().arg.unwrap() >> 8;
            if vm.workload.unwrap().kind == Workload::Hog {
                let share =
                    vm.mem
                        .limit_mib
                        .unwrap_or(u32::MAX)
                        .min(if vm.mem.reservation_mib > 0 {
                            vm.mem.reservation_mib
                        } else {
                            u32::MAX
                        });
                assert!(
                    touched_mib < u64::from(share),
                    "{name}: {} touches more than its share",
                    vm.name
                );
            }
        }
    }
    // limits-small and limits-swap test the limit, limits the reservations.
    let small = VmLayout::parse(LIMITS_SMALL).unwrap();
    assert!(small.vms.iter().all(|vm| vm.mem.limit_mib == Some(3)));
    let limits = VmLayout::parse(LIMITS).unwrap();
    assert!(
        limits
            .vms
            .iter()
            .filter(|vm| vm.mem.reservation_mib > 0)
            .count()
            >= 4
    );
    assert!(limits
        .vms
        .iter()
        .any(|vm| vm.name != "hog" && vm.mem == MemShare::default()));
}

/// The `watchdog` layout: the three stuck workloads, each with a watchdog, beside a test
/// guest whose window is longer.
#[test]
fn watchdog_layout_has_three_stuck_vms_and_a_good_one() {
    use hv_devices::vmconfig::Workload;
    for blob in [WATCHDOG, WATCHDOG_CONSOLE] {
        let layout = VmLayout::parse(blob).unwrap();
        let kinds: Vec<Option<Workload>> = layout
            .vms
            .iter()
            .map(|vm| vm.workload.map(|w| w.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                Some(Workload::StuckWait),
                Some(Workload::StuckYield),
                Some(Workload::StuckStorm),
                None
            ]
        );
        assert!(layout.vms.iter().all(|vm| vm.watchdog_ms.is_some()));
        assert_eq!(layout.vms[3].image, "testguest");
        assert!(layout.vms[3].watchdog_ms >= layout.vms[0].watchdog_ms);
    }
}

#[test]
fn guests_vcpus_layout_has_a_two_vcpu_vm() {
    let layout = VmLayout::parse(GUESTS_VCPUS).unwrap();
    let vcpus: Vec<u32> = layout.vms.iter().map(|vm| vm.vcpus).collect();
    assert_eq!(vcpus, [2, 1, 1]);
    let dedup: Vec<u32> = VmLayout::parse(DEDUP_VCPUS)
        .unwrap()
        .vms
        .iter()
        .map(|vm| vm.vcpus)
        .collect();
    assert_eq!(dedup, [2, 1, 1, 1, 1]);
}

/// Every configs/*.dts has a committed fixture listed in `ALL`.
#[test]
fn every_source_has_a_fixture() {
    let mut sources: Vec<String> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".dts").map(String::from)
        })
        .collect();
    sources.sort();
    let mut listed: Vec<String> = ALL.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        sources, listed,
        "configs/*.dts and the fixtures listed here differ"
    );
}

/// The fixtures must match their sources. Needs dtc; without it the check is skipped with a
/// note (tools/build-configs.sh check does the same comparison).
#[test]
fn fixtures_are_up_to_date() {
    if Command::new("dtc").arg("--version").output().is_err() {
        eprintln!("dtc not installed: fixture freshness not checked");
        return;
    }
    let out = std::env::temp_dir().join(format!("mipsvisor-configs-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for &(name, fixture) in ALL {
        let dts = repo().join("configs").join(format!("{name}.dts"));
        let dtb = out.join(format!("{name}.dtb"));
        let run = Command::new("dtc")
            .args(["-I", "dts", "-O", "dtb", "-o"])
            .arg(&dtb)
            .arg(&dts)
            .output()
            .unwrap();
        assert!(run.status.success(), "dtc failed on {name}.dts: {run:?}");
        assert!(run.stderr.is_empty(), "dtc warned on {name}.dts: {run:?}");
        let fresh = std::fs::read(&dtb).unwrap();
        assert!(
            fresh == fixture,
            "tests/fixtures/{name}.dtb is stale: run tools/build-configs.sh fixtures"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn memguest_layouts_give_every_vm_a_workload() {
    use hv_devices::vmconfig::Workload;
    let kinds = |blob| -> Vec<Workload> {
        let layout = VmLayout::parse(blob).unwrap();
        layout
            .vms
            .iter()
            .map(|vm| {
                assert_eq!(vm.image, "memguest");
                vm.workload.expect("every memguest VM has a workload").kind
            })
            .collect()
    };
    // The layout in tools/test.sh needs no memory service.
    assert_eq!(kinds(MEMGUEST), [Workload::Swap, Workload::Stress]);
    assert_eq!(
        kinds(MEMGUEST_SMOKE),
        [
            Workload::Dedup,
            Workload::Swap,
            Workload::Idle,
            Workload::Stress
        ]
    );
}
