//! The virtio-balloon device (virtio 1.2 section 5.5) as a [`VirtioDevice`] backend: queue
//! roles, configuration space, PFN arrays and statistics, with the memory policy left to
//! the firmware through [`BalloonHooks`].
//!
//! The guest driver is untrusted. Malformed chains (a `QueueError` with a head, PFN arrays
//! of a length that is not a multiple of 4, or longer than [`MAX_PFNS_PER_CHAIN`]) are
//! returned to the driver unused and counted; PFNs the hooks refuse (outside the VM's RAM,
//! already ballooned, ...) are counted one by one. Only a broken ring stops the device (the
//! transport then sets `DEVICE_NEEDS_RESET`).
//!
//! Queue numbering: the spec lists inflateq 0, deflateq 1, statsq 2, free_page_vq 3,
//! reporting_vq 4, but a queue exists only with its feature, and Linux's virtio-mmio driver
//! numbers the existing ones consecutively (`vm_find_vqs` skips absent queues without
//! using an index). So roles are assigned at `activate` from the negotiated features.
//! Free page hinting is not offered.

use alloc::vec::Vec;

use hv_core::addr::{Gfn, Gpa};

use crate::virtio_mmio::VirtioDevice;
use crate::virtqueue::{DescChain, GuestMemory, QueueError, SplitQueue};

/// Virtio device ID of the balloon.
pub const DEVICE_ID: u32 = 5;
/// Feature: the host must be told before pages are used (not offered: we never need it).
pub const F_MUST_TELL_HOST: u64 = 1 << 0;
/// Feature: a statistics queue exists.
pub const F_STATS_VQ: u64 = 1 << 1;
/// Feature: the guest deflates when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature: free page hinting (not offered).
pub const F_FREE_PAGE_HINT: u64 = 1 << 3;
/// Feature: the guest poisons free pages (`poison_val` in the configuration).
pub const F_PAGE_POISON: u64 = 1 << 4;
/// Feature: free page reporting queue.
pub const F_REPORTING: u64 = 1 << 5;
/// Features this device offers.
pub const OFFERED_FEATURES: u64 = F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_POISON | F_REPORTING;

/// Balloon PFNs are in 4 KiB units whatever the guest's page size (section 5.5.6).
pub const PFN_SHIFT: u32 = 12;
/// Most PFNs accepted in one inflate or deflate chain (Linux sends at most 256).
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// Size of one statistics entry: le16 tag, le64 value (packed).
pub const STAT_ENTRY_BYTES: usize = 10;
/// Most statistics entries read from one buffer.
pub const MAX_STATS: usize = 32;

/// Configuration space offsets (section 5.5.4).
pub mod config {
    /// le32, device: target size in 4 KiB pages.
    pub const NUM_PAGES: u64 = 0;
    /// le32, driver: current size in 4 KiB pages.
    pub const ACTUAL: u64 = 4;
    /// le32, device: free page hint command (always 0 here).
    pub const FREE_PAGE_HINT_CMD_ID: u64 = 8;
    /// le32, driver: the value free pages are filled with.
    pub const POISON_VAL: u64 = 12;
    /// Bytes of configuration space.
    pub const LEN: u64 = 16;
}

/// What a queue is for, once features are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// Pages given to the host.
    Inflate,
    /// Pages taken back.
    Deflate,
    /// Memory statistics.
    Stats,
    /// Free page reports.
    Reporting,
}

/// Why the firmware refused one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRefused {
    /// Not RAM of this VM.
    OutOfRange,
    /// Already in the requested state (inflated twice, deflated while not inflated).
    Duplicate,
    /// Not allowed (a read-only slot, a page the host pinned).
    NotAllowed,
}

/// The memory side of the balloon, implemented by the firmware over the memory core.
pub trait BalloonHooks {
    /// The guest gives page `gfn` to the host: unmap it and free its frame.
    fn inflate(&mut self, gfn: Gfn) -> Result<(), PageRefused>;
    /// The guest takes page `gfn` back (it comes back zero-filled on next touch).
    fn deflate(&mut self, gfn: Gfn) -> Result<(), PageRefused>;
    /// The guest reports `[gpa, gpa + len)` free (free page reporting); the host may drop
    /// its frames. Returns whether the range was accepted.
    fn report_free(&mut self, gpa: Gpa, len: u32) -> Result<(), PageRefused>;
    /// A new set of memory statistics (tag, value) arrived.
    fn stats(&mut self, entries: &[(u16, u64)]);
    /// A chain on queue `role` was malformed and went back unused (already counted in
    /// [`BalloonStats::bad_chains`]); lets the firmware log it.
    fn chain_rejected(&mut self, _role: QueueRole) {}
    /// The PFNs of one well-formed inflate or deflate chain follow: the hooks may batch the
    /// work (one unmap and one flush per run of pages) until [`BalloonHooks::chain_end`].
    fn chain_start(&mut self, _role: QueueRole) {}
    /// The chain announced by [`BalloonHooks::chain_start`] is done: finish batched work.
    fn chain_end(&mut self, _role: QueueRole) {}
}

/// Counters for the stats console and the `balloon` scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages inflated (given to the host).
    pub inflated_pages: u64,
    /// Pages deflated.
    pub deflated_pages: u64,
    /// PFNs refused by the hooks.
    pub refused_pfns: u64,
    /// Chains returned unused: malformed, wrong length, too many PFNs.
    pub bad_chains: u64,
    /// Statistics buffers received.
    pub stats_updates: u64,
    /// Free page reports accepted.
    pub reported_ranges: u64,
}

/// The balloon backend.
#[derive(Debug)]
pub struct VirtioBalloon<H> {
    hooks: H,
    target_pages: u32,
    actual_pages: u32,
    poison_val: u32,
    features: u64,
    roles: Vec<QueueRole>,
    /// The statistics buffer the driver left with us, returned to ask for fresh numbers.
    stats_head: Option<u16>,
    stats: BalloonStats,
    maxes: [u16; 4],
}

impl<H: BalloonHooks> VirtioBalloon<H> {
    /// A balloon with target 0 (fully deflated).
    pub fn new(hooks: H) -> Self {
        Self {
            hooks,
            target_pages: 0,
            actual_pages: 0,
            poison_val: 0,
            features: 0,
            roles: Vec::new(),
            stats_head: None,
            stats: BalloonStats::default(),
            maxes: [QUEUE_SIZE; 4],
        }
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The hooks, mutably.
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// The counters.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// Sets the target size in 4 KiB pages; the caller then signals a configuration change
    /// (`VirtioMmio::config_changed`).
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
    }

    /// The target size in pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// The size the driver last reported in `actual`.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The role of queue `index` under the negotiated features, or `None`.
    pub fn role(&self, index: u16) -> Option<QueueRole> {
        self.roles.get(usize::from(index)).copied()
    }

    /// Returns the held statistics buffer so the driver refills it (section 5.5.6.3); use
    /// through `VirtioMmio::with_queue` on the statistics queue. Returns whether a buffer
    /// was held.
    pub fn request_stats(
        &mut self,
        vq: &mut SplitQueue,
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        match self.stats_head.take() {
            Some(head) => vq.push_used(mem, head, 0).map(|()| true),
            None => Ok(false),
        }
    }

    /// The statistics queue index, when negotiated.
    pub fn stats_queue(&self) -> Option<u16> {
        let i = self.roles.iter().position(|&r| r == QueueRole::Stats)?;
        u16::try_from(i).ok()
    }

    fn pfn_array(chain: &DescChain, mem: &dyn GuestMemory) -> Option<Vec<u32>> {
        let bytes = chain.readable_bytes();
        let count = usize::try_from(bytes / 4).ok()?;
        if !bytes.is_multiple_of(4) || count > MAX_PFNS_PER_CHAIN || chain.writable_bytes() != 0 {
            return None;
        }
        let mut raw = alloc::vec![0u8; count * 4];
        chain.read_into(mem, &mut raw).ok()?;
        Some(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    fn handle_chain(&mut self, role: QueueRole, chain: &DescChain, mem: &dyn GuestMemory) -> bool {
        match role {
            QueueRole::Inflate | QueueRole::Deflate => {
                let Some(pfns) = Self::pfn_array(chain, mem) else {
                    return false;
                };
                self.hooks.chain_start(role);
                for pfn in pfns {
                    let gfn = Gfn::new(u64::from(pfn));
                    let done = if role == QueueRole::Inflate {
                        self.hooks
                            .inflate(gfn)
                            .map(|()| &mut self.stats.inflated_pages)
                    } else {
                        self.hooks
                            .deflate(gfn)
                            .map(|()| &mut self.stats.deflated_pages)
                    };
                    match done {
                        Ok(counter) => *counter += 1,
                        Err(_) => self.stats.refused_pfns += 1,
                    }
                }
                self.hooks.chain_end(role);
                true
            }
            QueueRole::Reporting => {
                if chain.readable_bytes() != 0 {
                    return false;
                }
                // Each writable buffer is a free range (section 5.5.6.5); nothing is written.
                for b in chain.writable() {
                    if self.hooks.report_free(b.gpa, b.len).is_ok() {
                        self.stats.reported_ranges += 1;
                    } else {
                        self.stats.refused_pfns += 1;
                    }
                }
                true
            }
            QueueRole::Stats => true,
        }
    }

    fn read_stats(&mut self, chain: &DescChain, mem: &dyn GuestMemory) -> bool {
        let bytes = chain.readable_bytes();
        if !bytes.is_multiple_of(STAT_ENTRY_BYTES as u64) || chain.writable_bytes() != 0 {
            return false;
        }
        let mut raw = [0u8; MAX_STATS * STAT_ENTRY_BYTES];
        let Ok(n) = chain.read_into(mem, &mut raw) else {
            return false;
        };
        let entries: Vec<(u16, u64)> = raw[..n - n % STAT_ENTRY_BYTES]
            .chunks_exact(STAT_ENTRY_BYTES)
            .map(|e| {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                let val = u64::from_le_bytes([e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]]);
                (tag, val)
            })
            .collect();
        self.hooks.stats(&entries);
        self.stats.stats_updates += 1;
        true
    }
}

impl<H: BalloonHooks> VirtioDevice for VirtioBalloon<H> {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn device_features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // Inflate, deflate and up to two optional queues (statistics, reporting).
        &self.maxes
    }

    fn config_len(&self) -> u64 {
        config::LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; config::LEN as usize];
        space[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        space[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        space[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        let at = offset as usize;
        data.copy_from_slice(&space[at..at + data.len()]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` and `poison_val` are the driver's; other bytes are ignored.
        let mut space = [0u8; config::LEN as usize];
        space[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        space[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        let at = offset as usize;
        space[at..at + data.len()].copy_from_slice(data);
        self.actual_pages = u32::from_le_bytes([space[4], space[5], space[6], space[7]]);
        if self.features & F_PAGE_POISON != 0 {
            self.poison_val = u32::from_le_bytes([space[12], space[13], space[14], space[15]]);
        }
    }

    fn activate(&mut self, features: u64) {
        self.features = features;
        self.roles = alloc::vec![QueueRole::Inflate, QueueRole::Deflate];
        if features & F_STATS_VQ != 0 {
            self.roles.push(QueueRole::Stats);
        }
        if features & F_REPORTING != 0 {
            self.roles.push(QueueRole::Reporting);
        }
    }

    fn reset(&mut self) {
        self.actual_pages = 0;
        self.poison_val = 0;
        self.features = 0;
        self.roles.clear();
        self.stats_head = None;
    }

    fn queue_disabled(&mut self, queue: u16) {
        if self.role(queue) == Some(QueueRole::Stats) {
            // The held buffer belongs to the old ring; never return it into a new one.
            self.stats_head = None;
        }
    }

    fn process_queue(
        &mut self,
        queue: u16,
        vq: &mut SplitQueue,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), QueueError> {
        let Some(role) = self.role(queue) else {
            // A queue the negotiated features do not define: leave its buffers alone.
            return Ok(());
        };
        loop {
            let chain = match vq.pop(mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => return Ok(()),
                Err(e) => match e.head() {
                    Some(head) => {
                        self.stats.bad_chains += 1;
                        self.hooks.chain_rejected(role);
                        vq.push_used(mem, head, 0)?;
                        continue;
                    }
                    None => return Err(e),
                },
            };
            if role == QueueRole::Stats {
                // The driver's buffer stays with the device until new numbers are wanted; a
                // second one returns the first.
                if !self.read_stats(&chain, mem) {
                    self.stats.bad_chains += 1;
                    self.hooks.chain_rejected(role);
                    vq.push_used(mem, chain.head, 0)?;
                    continue;
                }
                if let Some(old) = self.stats_head.replace(chain.head) {
                    vq.push_used(mem, old, 0)?;
                }
                continue;
            }
            if !self.handle_chain(role, &chain, mem) {
                self.stats.bad_chains += 1;
                self.hooks.chain_rejected(role);
            }
            vq.push_used(mem, chain.head, 0)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MmioDevice;
    use crate::irq::LatchedLine;
    use crate::test_driver::{bring_up, desc, kick, queue_base, write_reg as w};
    use crate::virtio_mmio::{regs, status, VirtioMmio};
    use crate::virtqueue::{read_u16, VecMemory, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use crate::Width;
    use alloc::collections::BTreeSet;
    use alloc::vec;
    use proptest::prelude::*;

    /// Hooks over a VM of `ram_pages` pages that remembers what is ballooned.
    #[derive(Debug, Default)]
    struct Recorder {
        ram_pages: u64,
        ballooned: BTreeSet<u64>,
        stats: Vec<Vec<(u16, u64)>>,
        reports: Vec<(Gpa, u32)>,
        rejected: Vec<QueueRole>,
        /// `chain_start` / `chain_end` calls, in order (true = start).
        brackets: Vec<(bool, QueueRole)>,
        /// PFN calls made outside a start/end bracket.
        unbracketed: u64,
    }

    impl BalloonHooks for Recorder {
        fn inflate(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
            self.note_pfn(QueueRole::Inflate);
            if gfn.raw() >= self.ram_pages {
                return Err(PageRefused::OutOfRange);
            }
            if !self.ballooned.insert(gfn.raw()) {
                return Err(PageRefused::Duplicate);
            }
            Ok(())
        }
        fn deflate(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
            self.note_pfn(QueueRole::Deflate);
            if gfn.raw() >= self.ram_pages {
                return Err(PageRefused::OutOfRange);
            }
            if !self.ballooned.remove(&gfn.raw()) {
                return Err(PageRefused::Duplicate);
            }
            Ok(())
        }
        fn report_free(&mut self, gpa: Gpa, len: u32) -> Result<(), PageRefused> {
            self.reports.push((gpa, len));
            Ok(())
        }
        fn stats(&mut self, entries: &[(u16, u64)]) {
            self.stats.push(entries.to_vec());
        }
        fn chain_rejected(&mut self, role: QueueRole) {
            self.rejected.push(role);
        }
        fn chain_start(&mut self, role: QueueRole) {
            self.brackets.push((true, role));
        }
        fn chain_end(&mut self, role: QueueRole) {
            self.brackets.push((false, role));
        }
    }

    impl Recorder {
        fn note_pfn(&mut self, role: QueueRole) {
            if self.brackets.last() != Some(&(true, role)) {
                self.unbracketed += 1;
            }
        }
    }

    type Dev = VirtioMmio<VirtioBalloon<Recorder>, VecMemory, LatchedLine>;

    const RAM_PAGES: u64 = 64;
    const DATA: u64 = 0x2_0000;

    fn r(d: &mut Dev, offset: u64) -> u32 {
        d.read(offset, Width::Word).unwrap() as u32
    }

    /// A driver that negotiated `features` and set up `queues` queues.
    fn device(features: u64, queues: u16) -> Dev {
        let balloon = VirtioBalloon::new(Recorder {
            ram_pages: RAM_PAGES,
            ..Recorder::default()
        });
        let mem = VecMemory::new(Gpa::new(0), 0x4_0000);
        let mut d = VirtioMmio::new(balloon, mem, LatchedLine::default()).unwrap();
        bring_up(&mut d, features, queues);
        d
    }

    fn put(d: &mut Dev, gpa: u64, data: &[u8]) {
        d.memory_mut().write(Gpa::new(gpa), data).unwrap();
    }

    fn used_idx(d: &Dev, q: u16) -> u16 {
        read_u16(d.memory(), Gpa::new(queue_base(q) + 0x2002)).unwrap()
    }

    /// Sends `pfns` as one buffer on queue `q`.
    fn send_pfns(d: &mut Dev, q: u16, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        put(d, DATA, &bytes);
        desc(d, q, 0, DATA, bytes.len() as u32, 0, 0);
        kick(d, q, 0);
    }

    #[test]
    fn queue_roles_follow_the_features() {
        let d = device(F_STATS_VQ | F_REPORTING, 4);
        let roles: Vec<_> = (0..5).map(|q| d.backend().role(q)).collect();
        assert_eq!(
            roles,
            vec![
                Some(QueueRole::Inflate),
                Some(QueueRole::Deflate),
                Some(QueueRole::Stats),
                Some(QueueRole::Reporting),
                None
            ]
        );
        let d = device(F_REPORTING, 3);
        assert_eq!(d.backend().role(2), Some(QueueRole::Reporting));
        assert_eq!(d.backend().stats_queue(), None);
    }

    #[test]
    fn inflate_and_deflate_go_through_the_hooks() {
        let mut d = device(0, 2);
        send_pfns(&mut d, 0, &[10, 11, 10, 9999]);
        assert_eq!(used_idx(&d, 0), 1);
        assert!(d.irq().asserted);
        let s = d.backend().stats();
        assert_eq!((s.inflated_pages, s.refused_pfns), (2, 2));
        assert_eq!(
            d.backend()
                .hooks()
                .ballooned
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![10, 11]
        );
        send_pfns(&mut d, 1, &[11, 12]);
        let s = d.backend().stats();
        assert_eq!((s.deflated_pages, s.refused_pfns), (1, 3));
        assert_eq!(d.backend().hooks().ballooned.len(), 1);
        assert_eq!(d.last_error(), None);
        // Each well-formed chain's PFNs came inside one start/end bracket of its queue.
        assert_eq!(d.backend().hooks().unbracketed, 0);
        assert_eq!(
            d.backend().hooks().brackets,
            vec![
                (true, QueueRole::Inflate),
                (false, QueueRole::Inflate),
                (true, QueueRole::Deflate),
                (false, QueueRole::Deflate)
            ]
        );
    }

    #[test]
    fn malformed_chains_are_returned_and_counted() {
        let mut d = device(0, 2);
        // Length not a multiple of 4.
        put(&mut d, DATA, &[1, 0, 0, 0, 2, 0]);
        desc(&mut d, 0, 0, DATA, 6, 0, 0);
        kick(&mut d, 0, 0);
        // Too many PFNs.
        desc(
            &mut d,
            0,
            1,
            DATA,
            4 * (MAX_PFNS_PER_CHAIN as u32 + 1),
            0,
            0,
        );
        kick(&mut d, 0, 1);
        // A writable buffer in an inflate chain.
        desc(&mut d, 0, 2, DATA, 4, VIRTQ_DESC_F_NEXT, 3);
        desc(&mut d, 0, 3, DATA + 4, 4, VIRTQ_DESC_F_WRITE, 0);
        kick(&mut d, 0, 2);
        // A loop, and a buffer outside guest RAM.
        desc(&mut d, 0, 4, DATA, 4, VIRTQ_DESC_F_NEXT, 4);
        kick(&mut d, 0, 4);
        desc(&mut d, 0, 5, 0x10_0000, 4, 0, 0);
        kick(&mut d, 0, 5);
        assert_eq!(d.backend().stats().bad_chains, 5);
        assert_eq!(d.backend().hooks().rejected, vec![QueueRole::Inflate; 5]);
        assert_eq!(d.backend().stats().inflated_pages, 0);
        assert_eq!(used_idx(&d, 0), 5, "every chain went back to the driver");
        assert!(
            d.backend().hooks().brackets.is_empty(),
            "no PFN of a bad chain is used"
        );
        assert!(d.is_active(), "bad chains do not break the device");
    }

    #[test]
    fn broken_ring_stops_the_device() {
        let mut d = device(0, 2);
        put(&mut d, queue_base(0) + 0x1002, &1000u16.to_le_bytes());
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert!(!d.is_active());
        assert_ne!(r(&mut d, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn statistics_buffer_is_held_until_requested() {
        let mut d = device(F_STATS_VQ, 3);
        let mut entries = Vec::new();
        for (tag, val) in [(4u16, 1000u64), (5, 2000)] {
            entries.extend_from_slice(&tag.to_le_bytes());
            entries.extend_from_slice(&val.to_le_bytes());
        }
        put(&mut d, DATA, &entries);
        desc(&mut d, 2, 0, DATA, 20, 0, 0);
        kick(&mut d, 2, 0);
        assert_eq!(d.backend().hooks().stats, vec![vec![(4, 1000), (5, 2000)]]);
        assert_eq!(used_idx(&d, 2), 0, "held");
        let q = d.backend().stats_queue().unwrap();
        let asked = d.with_queue(q, |b, vq, mem| b.request_stats(vq, mem));
        assert_eq!(asked, Some(Ok(true)));
        assert_eq!(used_idx(&d, 2), 1);
        assert!(d.irq().asserted);
        let again = d.with_queue(q, |b, vq, mem| b.request_stats(vq, mem));
        assert_eq!(again, Some(Ok(false)));
        // A buffer of a length that is not whole entries goes straight back.
        desc(&mut d, 2, 1, DATA, 7, 0, 0);
        kick(&mut d, 2, 1);
        assert_eq!(d.backend().stats().bad_chains, 1);
        assert_eq!(used_idx(&d, 2), 2);
        // A buffer held when the driver turns the queue off is forgotten, not returned
        // into whatever ring the queue gets next.
        desc(&mut d, 2, 2, DATA, 20, 0, 0);
        kick(&mut d, 2, 2);
        assert_eq!(used_idx(&d, 2), 2, "held");
        w(&mut d, regs::QUEUE_SEL, 2);
        w(&mut d, regs::QUEUE_READY, 0);
        assert!(!d.queue_ready(2));
        assert_eq!(d.backend().stats_head, None);
    }

    #[test]
    fn free_page_reports_reach_the_hooks() {
        let mut d = device(F_REPORTING, 3);
        desc(
            &mut d,
            2,
            0,
            DATA,
            0x1000,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        desc(&mut d, 2, 1, DATA + 0x4000, 0x2000, VIRTQ_DESC_F_WRITE, 0);
        kick(&mut d, 2, 0);
        assert_eq!(
            d.backend().hooks().reports,
            vec![(Gpa::new(DATA), 0x1000), (Gpa::new(DATA + 0x4000), 0x2000)]
        );
        assert_eq!(d.backend().stats().reported_ranges, 2);
        assert_eq!(used_idx(&d, 2), 1);
    }

    /// Descriptor-level validation at the edges: PFN arrays split over descriptors (even
    /// inside one PFN) and exactly at the PFN limit are fine; buffers that wrap around the
    /// address space or run past the end of guest memory, readable buffers on the
    /// reporting queue and statistics buffers of partial entries are whole bad chains.
    #[test]
    fn descriptor_edges_of_balloon_chains() {
        let mut d = device(F_STATS_VQ | F_REPORTING, 4);
        // PFNs 1, 2, 3 over three descriptors, the middle one splitting PFN 2.
        let bytes: Vec<u8> = [1u32, 2, 3].iter().flat_map(|p| p.to_le_bytes()).collect();
        put(&mut d, DATA, &bytes);
        desc(&mut d, 0, 0, DATA, 6, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut d, 0, 1, DATA + 6, 2, VIRTQ_DESC_F_NEXT, 2);
        desc(&mut d, 0, 2, DATA + 8, 4, 0, 0);
        kick(&mut d, 0, 0);
        let ballooned: Vec<u64> = d.backend().hooks().ballooned.iter().copied().collect();
        assert_eq!(ballooned, vec![1, 2, 3]);
        // Exactly the limit: every PFN reaches the hooks (the ones beyond RAM are refused
        // one by one), the chain is not bad.
        let limit: Vec<u32> = (0..MAX_PFNS_PER_CHAIN as u32).map(|i| 100 + i).collect();
        send_pfns(&mut d, 0, &limit);
        let s = d.backend().stats();
        assert_eq!(
            (s.bad_chains, s.refused_pfns),
            (0, MAX_PFNS_PER_CHAIN as u64)
        );
        // Wrapping around the address space, and straddling the end of guest memory.
        desc(&mut d, 0, 3, u64::MAX - 3, 8, 0, 0);
        kick(&mut d, 0, 3);
        desc(&mut d, 1, 0, 0x4_0000 - 4, 8, 0, 0);
        kick(&mut d, 1, 0);
        // A readable buffer on the reporting queue (reports are device-writable only).
        desc(&mut d, 3, 0, DATA, 0x1000, 0, 0);
        kick(&mut d, 3, 0);
        // A statistics buffer of one entry and one byte.
        desc(&mut d, 2, 0, DATA, STAT_ENTRY_BYTES as u32 + 1, 0, 0);
        kick(&mut d, 2, 0);
        let s = d.backend().stats();
        assert_eq!(s.bad_chains, 4);
        assert_eq!(
            (s.inflated_pages, s.deflated_pages, s.reported_ranges),
            (3, 0, 0)
        );
        assert_eq!(s.stats_updates, 0);
        assert_eq!(
            d.backend().hooks().rejected,
            vec![
                QueueRole::Inflate,
                QueueRole::Deflate,
                QueueRole::Reporting,
                QueueRole::Stats
            ]
        );
        assert!(d.backend().hooks().reports.is_empty());
        // Every chain went back to the driver, and the device still works.
        assert_eq!(
            (
                used_idx(&d, 0),
                used_idx(&d, 1),
                used_idx(&d, 2),
                used_idx(&d, 3)
            ),
            (3, 1, 1, 1)
        );
        assert!(d.is_active());
        send_pfns(&mut d, 1, &[2]);
        assert_eq!(d.backend().stats().deflated_pages, 1);
    }

    #[test]
    fn configuration_space() {
        let mut d = device(F_PAGE_POISON, 2);
        d.backend_mut().set_target_pages(32);
        d.config_changed();
        assert!(d.irq().asserted);
        assert_eq!(d.read(0x100 + config::NUM_PAGES, Width::Word), Ok(32));
        d.write(0x100 + config::ACTUAL, Width::Word, 16).unwrap();
        assert_eq!(d.backend().actual_pages(), 16);
        d.write(0x100 + config::NUM_PAGES, Width::Word, 1).unwrap();
        assert_eq!(d.backend().target_pages(), 32, "num_pages is the device's");
        d.write(0x100 + config::POISON_VAL, Width::Word, 0xaa)
            .unwrap();
        assert_eq!(d.read(0x100 + config::POISON_VAL, Width::Word), Ok(0xaa));
        let mut plain = device(0, 2);
        plain
            .write(0x100 + config::POISON_VAL, Width::Word, 0xaa)
            .unwrap();
        assert_eq!(plain.read(0x100 + config::POISON_VAL, Width::Word), Ok(0));
        w(&mut d, regs::STATUS, 0);
        assert_eq!(d.backend().actual_pages(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Arbitrary PFN arrays and descriptor fields on the inflate and deflate queues:
        /// no panic, and the counters always match the hooks' view.
        #[test]
        fn hostile_balloon_traffic(
            sends in proptest::collection::vec(
                (0u16..2,
                 proptest::collection::vec(prop_oneof![0u32..80, any::<u32>()], 0..40),
                 prop_oneof![Just(None), Just(Some(0u32)), any::<u32>().prop_map(Some)],
                 0u16..8),
                1..20),
        ) {
            let mut d = device(0, 2);
            for (q, pfns, len_override, flags) in sends {
                let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
                put(&mut d, DATA, &bytes);
                let len = len_override.unwrap_or(bytes.len() as u32);
                desc(&mut d, q, 0, DATA, len, flags & !VIRTQ_DESC_F_NEXT, 0);
                kick(&mut d, q, 0);
                let s = d.backend().stats();
                prop_assert_eq!(
                    s.inflated_pages - s.deflated_pages,
                    d.backend().hooks().ballooned.len() as u64
                );
                prop_assert!(d.backend().hooks().ballooned.iter().all(|&g| g < RAM_PAGES));
                prop_assert!(d.is_active());
            }
        }
    }
}
