//! Host timing of the device paths a guest drives: a UART THR store through the bus, a
//! virtio-mmio notify that moves one balloon chain of 256 PFNs, a bare virtqueue pop/push.
//!
//! Wall-clock numbers on the build machine, printed as `BENCH <name>=<value> ns`; they show
//! trends only. The instruction counts that matter for the firmware come from QEMU -icount.

use std::hint::black_box;
use std::time::Instant;

use hv_core::addr::{Gfn, Gpa};
use hv_devices::bus::{MmioBus, MmioDevice, MmioWindow};
use hv_devices::uart16550::Uart16550;
use hv_devices::virtio_balloon::{BalloonHooks, PageRefused, VirtioBalloon};
use hv_devices::virtio_mmio::{regs, status, VirtioMmio, VIRTIO_F_VERSION_1};
use hv_devices::virtqueue::{
    GuestMemory, QueueFeatures, QueueLayout, SplitQueue, VecMemory, VIRTQ_DESC_F_NEXT,
};
use hv_devices::Width;

/// Runs `op` `iters` times, best of five rounds, and returns nanoseconds per call.
fn time_per_call(iters: u32, mut op: impl FnMut(u32)) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..iters {
            op(i);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    best
}

/// Accepts every page and does nothing: measures the device, not the memory core.
struct NullHooks;

impl BalloonHooks for NullHooks {
    fn inflate(&mut self, _gfn: Gfn) -> Result<(), PageRefused> {
        Ok(())
    }
    fn deflate(&mut self, _gfn: Gfn) -> Result<(), PageRefused> {
        Ok(())
    }
    fn report_free(&mut self, _gpa: Gpa, _len: u32) -> Result<(), PageRefused> {
        Ok(())
    }
    fn stats(&mut self, _entries: &[(u16, u64)]) {}
}

fn put_desc(mem: &mut VecMemory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    mem.write(Gpa::new(at), &b).unwrap();
}

/// Publishes head 0 as the next available entry of the ring at `avail`.
fn offer(mem: &mut VecMemory, avail: u64, idx: u16) {
    mem.write(
        Gpa::new(avail + 4 + 2 * u64::from(idx % 16)),
        &0u16.to_le_bytes(),
    )
    .unwrap();
    mem.write(Gpa::new(avail + 2), &idx.wrapping_add(1).to_le_bytes())
        .unwrap();
}

fn main() {
    let mut bus: MmioBus<Box<dyn MmioDevice>> = MmioBus::new();
    let uart = Uart16550::new(1, (), ()).unwrap();
    bus.insert(
        MmioWindow::new(Gpa::new(0x1f00_0000), 8).unwrap(),
        Box::new(uart),
    )
    .unwrap();
    let thr_ns = time_per_call(1_000_000, |i| {
        bus.write(
            black_box(Gpa::new(0x1f00_0000)),
            Width::Byte,
            u64::from(i & 0x7f),
        )
        .unwrap();
    });
    println!("BENCH uart_thr_store_ns={thr_ns:.1} ns");

    // A bare queue: pop a two-descriptor chain and return it.
    let mut mem = VecMemory::new(Gpa::new(0), 0x4_0000);
    put_desc(&mut mem, 0x1000, 0x8000, 64, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&mut mem, 0x1010, 0x9000, 64, 0, 0);
    let layout = QueueLayout {
        size: 16,
        desc: Gpa::new(0x1000),
        avail: Gpa::new(0x2000),
        used: Gpa::new(0x3000),
    };
    let mut vq = SplitQueue::new(layout, QueueFeatures::default(), &mem).unwrap();
    // Ring indices keep counting across rounds.
    let mut next = 0u16;
    let pop_ns = time_per_call(200_000, |_| {
        offer(&mut mem, 0x2000, next);
        next = next.wrapping_add(1);
        let chain = vq.pop(&mut mem).unwrap().unwrap();
        vq.push_used(&mut mem, chain.head, 0).unwrap();
        black_box(&chain);
    });
    println!("BENCH virtqueue_pop_push_ns={pop_ns:.1} ns");

    // The balloon through the transport: 256 PFNs per inflate chain, as Linux sends them.
    let mut mem = VecMemory::new(Gpa::new(0), 0x4_0000);
    let pfns: Vec<u8> = (0u32..256).flat_map(|p| p.to_le_bytes()).collect();
    mem.write(Gpa::new(0x8000), &pfns).unwrap();
    put_desc(&mut mem, 0x1000, 0x8000, 1024, 0, 0);
    let mut dev = VirtioMmio::new(VirtioBalloon::new(NullHooks), mem, ()).unwrap();
    let mut w = |off: u64, v: u64| dev.write(off, Width::Word, v).unwrap();
    w(
        regs::STATUS,
        u64::from(status::ACKNOWLEDGE | status::DRIVER),
    );
    w(regs::DRIVER_FEATURES_SEL, 1);
    w(regs::DRIVER_FEATURES, VIRTIO_F_VERSION_1 >> 32);
    w(
        regs::STATUS,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
    );
    w(regs::QUEUE_SEL, 0);
    w(regs::QUEUE_NUM, 16);
    w(regs::QUEUE_DESC_LOW, 0x1000);
    w(regs::QUEUE_DRIVER_LOW, 0x2000);
    w(regs::QUEUE_DEVICE_LOW, 0x3000);
    w(regs::QUEUE_READY, 1);
    w(
        regs::STATUS,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK),
    );
    let mut next = 0u16;
    let notify_ns = time_per_call(20_000, |_| {
        offer(dev.memory_mut(), 0x2000, next);
        next = next.wrapping_add(1);
        dev.write(regs::QUEUE_NOTIFY, Width::Word, 0).unwrap();
        dev.write(regs::INTERRUPT_ACK, Width::Word, 1).unwrap();
    });
    assert!(dev.is_active(), "{:?}", dev.last_error());
    println!("BENCH balloon_inflate_chain256_ns={notify_ns:.1} ns");
    println!(
        "BENCH balloon_inflate_ns_per_page={:.1} ns",
        notify_ns / 256.0
    );
}
