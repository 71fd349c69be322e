//! The shipped VM layouts (configs/*.dts) parse, pass every check, and say what their
//! scenarios need; the committed blobs are what dtc makes of the sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use hv_devices::vmconfig::{DeviceKind, VirtioKind, VmLayout};

const DEFAULT: &[u8] = include_bytes!("fixtures/default.dtb");
const GUESTS: &[u8] = include_bytes!("fixtures/guests.dtb");
const ISOLATION: &[u8] = include_bytes!("fixtures/isolation.dtb");
const DEDUP: &[u8] = include_bytes!("fixtures/dedup.dtb");

/// Images the scenarios use (the firmware checks against the ones it carries).
const IMAGES: &[&str] = &["testguest", "hostile"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    for vm in &layout.vms {
        assert!(vm
            .devices
            .iter()
            .any(|d| d.kind == DeviceKind::VirtioMmio(VirtioKind::Balloon)));
    }
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
    for (name, fixture) in [
        ("default", DEFAULT),
        ("guests", GUESTS),
        ("isolation", ISOLATION),
        ("dedup", DEDUP),
    ] {
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
