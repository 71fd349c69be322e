//! The machine description a guest kernel gets: a flattened device tree generated from the
//! VM's layout (`VmSpec`), for VMs with `boot-protocol = "uhi"`.
//!
//! It describes what the guest can actually reach: its RAM, one CPU with a fixed-rate clock
//! (Linux's generic MIPS platform takes the Count rate as half of it), the CPU's own
//! interrupt controller (`mti,cpu-interrupt-controller`: hardware interrupt n is Cause.IP n),
//! every 16550 console on [`UART_CPU_IRQ`] and every virtio-mmio transport on
//! [`VIRTIO_CPU_IRQ`], and `/chosen` with the command line and the console. The firmware
//! places the blob with [`placement`] and passes it by the UHI convention.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::fdt_writer::{FdtError, FdtWriter};
use crate::vmconfig::{CpuModel, DeviceKind, VmSpec};
use hv_core::addr::{Gpa, PAGE_SIZE};

/// Cause.IP line of a VM's 16550 consoles.
pub const UART_CPU_IRQ: u32 = 2;
/// Cause.IP line of a VM's virtio-mmio transports (shared by all of them).
pub const VIRTIO_CPU_IRQ: u32 = 3;
/// Input clock the device tree gives the 16550 (the usual 1.8432 MHz; the model ignores
/// the divisor, so any value would do).
pub const UART_CLOCK_HZ: u32 = 1_843_200;
/// Largest blob the firmware places (a VM has at most 8 devices: a few KiB at most).
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// phandles of the nodes others point at.
const PHANDLE_CPU_CLOCK: u32 = 1;
const PHANDLE_CPU_INTC: u32 = 2;

/// What the host adds to the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The CPU clock the guest is told (twice the rate its Count register ticks at).
    pub cpu_clock_hz: u32,
    /// Which start of the VM this is (1 = the first; a guest restart counts one up), in
    /// `/chosen/mipsvisor,boot-count`.
    pub boot_count: u32,
}

/// The `compatible` of the CPU node for a model.
fn cpu_compatible(model: CpuModel) -> &'static str {
    match model {
        CpuModel::Mips32R2 => "mti,mips24Kc",
        CpuModel::Mips64R2 => "mipsvisor,mips64r2-vcpu",
    }
}

/// Address and size cells: one each if everything the tree names is below 4 GiB.
fn cells_for(vm: &VmSpec) -> u32 {
    let highest = core::iter::once(vm.ram.end_raw())
        .chain(vm.rom.map(|r| r.end_raw()))
        .chain(vm.devices.iter().map(|d| d.window.end_raw()))
        .max()
        .unwrap_or(0);
    if highest <= 1 << 32 {
        1
    } else {
        2
    }
}

/// `reg` cells for one region.
fn reg_cells(cells: u32, base: u64, size: u64) -> Vec<u32> {
    if cells == 1 {
        alloc::vec![base as u32, size as u32]
    } else {
        alloc::vec![
            (base >> 32) as u32,
            base as u32,
            (size >> 32) as u32,
            size as u32
        ]
    }
}

/// The device tree of `vm`.
pub fn build(vm: &VmSpec, host: &HostFacts) -> Result<Vec<u8>, FdtError> {
    let cells = cells_for(vm);
    let mut w = FdtWriter::new();
    w.begin_node("")?;
    w.property_u32("#address-cells", cells)?;
    w.property_u32("#size-cells", cells)?;
    w.property_string("compatible", "mipsvisor,vm")?;
    w.property_string("model", &format!("mipsvisor VM {}", vm.name))?;
    w.property_u32("interrupt-parent", PHANDLE_CPU_INTC)?;

    let uarts: Vec<String> = vm
        .devices
        .iter()
        .filter(|d| matches!(d.kind, DeviceKind::Uart16550 { .. }))
        .map(|d| format!("/serial@{:x}", d.window.base().raw()))
        .collect();

    w.begin_node("chosen")?;
    w.property_string("bootargs", vm.bootargs.as_deref().unwrap_or(""))?;
    if let Some(console) = uarts.first() {
        w.property_string("stdout-path", console)?;
    }
    w.property_u32("mipsvisor,boot-count", host.boot_count)?;
    w.end_node()?;

    if !uarts.is_empty() {
        w.begin_node("aliases")?;
        for (i, path) in uarts.iter().enumerate() {
            w.property_string(&format!("serial{i}"), path)?;
        }
        w.end_node()?;
    }

    w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for cpu in 0..vm.vcpus {
        w.begin_node(&format!("cpu@{cpu}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", cpu_compatible(vm.cpu))?;
        w.property_u32("reg", cpu)?;
        w.property_u32("clocks", PHANDLE_CPU_CLOCK)?;
        w.end_node()?;
    }
    w.end_node()?;

    w.begin_node("cpu-clock")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", host.cpu_clock_hz)?;
    w.property_string("clock-output-names", "cpu")?;
    w.property_u32("phandle", PHANDLE_CPU_CLOCK)?;
    w.end_node()?;

    w.begin_node("interrupt-controller")?;
    w.property_string("compatible", "mti,cpu-interrupt-controller")?;
    w.property_empty("interrupt-controller")?;
    w.property_u32("#address-cells", 0)?;
    w.property_u32("#interrupt-cells", 1)?;
    w.property_u32("phandle", PHANDLE_CPU_INTC)?;
    w.end_node()?;

    w.begin_node(&format!("memory@{:x}", vm.ram.base.raw()))?;
    w.property_string("device_type", "memory")?;
    w.property_cells(
        "reg",
        &reg_cells(cells, vm.ram.base.raw(), vm.ram.size_bytes),
    )?;
    w.end_node()?;

    for device in &vm.devices {
        let base = device.window.base().raw();
        let reg = reg_cells(cells, base, device.window.size_bytes());
        match device.kind {
            DeviceKind::Uart16550 { stride } => {
                w.begin_node(&format!("serial@{base:x}"))?;
                w.property_string("compatible", "ns16550a")?;
                w.property_cells("reg", &reg)?;
                w.property_u32("reg-shift", stride.trailing_zeros())?;
                w.property_u32("reg-io-width", 1)?;
                w.property_u32("clock-frequency", UART_CLOCK_HZ)?;
                w.property_u32("interrupts", UART_CPU_IRQ)?;
                w.end_node()?;
            }
            DeviceKind::VirtioMmio(_) => {
                w.begin_node(&format!("virtio@{base:x}"))?;
                w.property_string("compatible", "virtio,mmio")?;
                w.property_cells("reg", &reg)?;
                w.property_u32("interrupts", VIRTIO_CPU_IRQ)?;
                w.end_node()?;
            }
        }
    }
    w.end_node()?;
    w.finish()
}

/// Where a blob of `len` bytes goes in a VM whose RAM is `[0, ram_bytes)` and whose image
/// ends at `image_end`: the last whole pages of RAM, so the kernel's own load and bss stay
/// clear of it. `None` if it does not fit above the image or is larger than
/// [`MAX_BLOB_BYTES`].
pub fn placement(ram_bytes: u64, image_end: u64, len: usize) -> Option<Gpa> {
    if len == 0 || len > MAX_BLOB_BYTES {
        return None;
    }
    let pages = (len as u64).div_ceil(PAGE_SIZE);
    let at = ram_bytes.checked_sub(pages * PAGE_SIZE)? / PAGE_SIZE * PAGE_SIZE;
    (at >= image_end).then_some(Gpa::new(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmconfig::{BootProtocol, VmLayout};
    use fdt::Fdt;

    fn linux_vm() -> VmSpec {
        let mut vm = VmLayout::builtin_default().vms.remove(0);
        vm.name = String::from("lx");
        vm.cpu = CpuModel::Mips32R2;
        vm.boot = BootProtocol::Uhi;
        vm.bootargs = Some(String::from("console=ttyS0 quiet"));
        vm
    }

    const HOST: HostFacts = HostFacts {
        cpu_clock_hz: 200_000_000,
        boot_count: 1,
    };

    fn u32_prop(node: &fdt::node::FdtNode<'_, '_>, name: &str) -> u32 {
        let v = node.property(name).unwrap().value;
        u32::from_be_bytes(v.try_into().unwrap())
    }

    fn str_prop<'a>(node: &fdt::node::FdtNode<'_, 'a>, name: &str) -> &'a str {
        node.property(name).unwrap().as_str().unwrap()
    }

    #[test]
    fn describes_the_vm() {
        let vm = linux_vm();
        let blob = build(&vm, &HOST).unwrap();
        assert_eq!(crate::vmconfig::check_blob(&blob), Ok(()));
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(u32_prop(&root, "#address-cells"), 1);
        assert_eq!(str_prop(&root, "model"), "mipsvisor VM lx");

        let memory = fdt.find_node("/memory@0").unwrap();
        assert_eq!(str_prop(&memory, "device_type"), "memory");
        let reg = memory.property("reg").unwrap().value;
        assert_eq!(reg[4..8], (vm.ram.size_bytes as u32).to_be_bytes());

        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(str_prop(&chosen, "bootargs"), "console=ttyS0 quiet");
        assert_eq!(str_prop(&chosen, "stdout-path"), "/serial@1f000000");
        assert_eq!(u32_prop(&chosen, "mipsvisor,boot-count"), 1);
        // A restart's tree differs only in the count, so it has the same size and place.
        let again = build(
            &vm,
            &HostFacts {
                boot_count: 2,
                ..HOST
            },
        )
        .unwrap();
        assert_eq!(again.len(), blob.len());
        let fdt2 = Fdt::new(&again).unwrap();
        assert_eq!(
            u32_prop(&fdt2.find_node("/chosen").unwrap(), "mipsvisor,boot-count"),
            2
        );

        // The CPU points at the fixed clock, whose rate is the host's.
        let cpu = fdt.find_node("/cpus/cpu@0").unwrap();
        assert_eq!(str_prop(&cpu, "device_type"), "cpu");
        assert_eq!(str_prop(&cpu, "compatible"), "mti,mips24Kc");
        let clock = fdt.find_node("/cpu-clock").unwrap();
        assert_eq!(u32_prop(&cpu, "clocks"), u32_prop(&clock, "phandle"));
        assert_eq!(str_prop(&clock, "compatible"), "fixed-clock");
        assert_eq!(u32_prop(&clock, "clock-frequency"), 200_000_000);
        assert_eq!(u32_prop(&clock, "#clock-cells"), 0);

        let intc = fdt.find_node("/interrupt-controller").unwrap();
        assert_eq!(
            str_prop(&intc, "compatible"),
            "mti,cpu-interrupt-controller"
        );
        assert!(intc.property("interrupt-controller").is_some());
        assert_eq!(u32_prop(&intc, "#interrupt-cells"), 1);
        assert_eq!(
            u32_prop(&root, "interrupt-parent"),
            u32_prop(&intc, "phandle")
        );

        // Every device of the layout, with its window and interrupt line.
        let uart = fdt.find_node("/serial@1f000000").unwrap();
        assert_eq!(str_prop(&uart, "compatible"), "ns16550a");
        assert_eq!(
            uart.property("reg").unwrap().value,
            [0x1f, 0, 0, 0, 0, 0, 0, 8]
        );
        assert_eq!(u32_prop(&uart, "reg-shift"), 0);
        assert_eq!(u32_prop(&uart, "interrupts"), UART_CPU_IRQ);
        assert_eq!(u32_prop(&uart, "clock-frequency"), UART_CLOCK_HZ);
        let virtio = fdt.find_node("/virtio@1f001000").unwrap();
        assert_eq!(str_prop(&virtio, "compatible"), "virtio,mmio");
        assert_eq!(
            virtio.property("reg").unwrap().value,
            [0x1f, 0, 0x10, 0, 0, 0, 2, 0]
        );
        assert_eq!(u32_prop(&virtio, "interrupts"), VIRTIO_CPU_IRQ);
        let alias = fdt.find_node("/aliases").unwrap();
        assert_eq!(str_prop(&alias, "serial0"), "/serial@1f000000");
    }

    #[test]
    fn strides_vcpus_and_high_addresses_follow_the_layout() {
        let mut vm = linux_vm();
        vm.vcpus = 2;
        vm.bootargs = None;
        vm.devices[0].kind = DeviceKind::Uart16550 { stride: 4 };
        vm.devices[0].window = crate::bus::MmioWindow::new(Gpa::new(0x1_2000_0000), 0x20).unwrap();
        let blob = build(&vm, &HOST).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_node("/cpus/cpu@1").is_some());
        assert_eq!(str_prop(&fdt.find_node("/chosen").unwrap(), "bootargs"), "");
        // A window above 4 GiB: two cells for addresses and sizes.
        assert_eq!(u32_prop(&fdt.find_node("/").unwrap(), "#address-cells"), 2);
        let uart = fdt.find_node("/serial@120000000").unwrap();
        assert_eq!(
            uart.property("reg").unwrap().value,
            [0, 0, 0, 1, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20]
        );
        assert_eq!(u32_prop(&uart, "reg-shift"), 2);
        // No UART: no stdout-path, no aliases.
        vm.devices.remove(0);
        let blob = build(&vm, &HOST).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt
            .find_node("/chosen")
            .unwrap()
            .property("stdout-path")
            .is_none());
        assert!(fdt.find_node("/aliases").is_none());
    }

    #[test]
    fn placement_is_at_the_top_and_above_the_image() {
        assert_eq!(
            placement(32 << 20, 0x60_0000, 1500),
            Some(Gpa::new((32 << 20) - 4096))
        );
        assert_eq!(
            placement(32 << 20, 0, 5000),
            Some(Gpa::new((32 << 20) - 8192))
        );
        // Would overlap the image, empty, or too large.
        assert_eq!(placement(1 << 20, (1 << 20) - 100, 1500), None);
        assert_eq!(placement(32 << 20, 0, 0), None);
        assert_eq!(placement(32 << 20, 0, MAX_BLOB_BYTES + 1), None);
        assert_eq!(placement(4096, 0, 8192), None);
    }

    /// When dtc is installed, the blob decompiles and the text names every node (dtc is the
    /// reference reader of the format).
    #[test]
    fn dtc_reads_it_back() {
        let blob = build(&linux_vm(), &HOST).unwrap();
        let dir = std::env::temp_dir().join(format!("guest-dt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.dtb");
        std::fs::write(&path, &blob).unwrap();
        let out = match std::process::Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                eprintln!("dtc not installed: skipped");
                return;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "compatible = \"mti,cpu-interrupt-controller\"",
            "compatible = \"fixed-clock\"",
            "clock-frequency = <0xbebc200>",
            "serial@1f000000 {",
            "virtio@1f001000 {",
            "bootargs = \"console=ttyS0 quiet\"",
            "device_type = \"memory\"",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        // And back again: dts to dtb gives a blob our parser reads to the same tree.
        let dts = dir.join("vm.dts");
        std::fs::write(&dts, &text).unwrap();
        let again = std::process::Command::new("dtc")
            .args(["-I", "dts", "-O", "dtb"])
            .arg(&dts)
            .output()
            .unwrap();
        assert!(again.status.success());
        let ours = Fdt::new(&blob).unwrap();
        let theirs = Fdt::new(&again.stdout).unwrap();
        let names = |f: &Fdt<'_>| {
            f.all_nodes()
                .map(|n| {
                    let props: Vec<(String, Vec<u8>)> = n
                        .properties()
                        .map(|p| (String::from(p.name), p.value.to_vec()))
                        .collect();
                    (String::from(n.name), props)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&theirs));
        std::fs::remove_dir_all(&dir).ok();
    }
}
