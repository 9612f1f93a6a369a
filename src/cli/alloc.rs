//! A process-wide allocator that keeps recently freed large blocks (>= 1 MiB) for reuse.
//!
//! candle allocates a fresh buffer for every op result. Training steps allocate and free the same
//! large sizes over and over (activations, gradients), and glibc serves those with `mmap`/`munmap`
//! (or trims its heap), so every step pays for zero-filled page faults and TLB shootdowns: on the
//! 2-core development machine about 40% of a mask-decoder training step was spent in the kernel.
//! This allocator puts freed blocks of at least [`MIN_BLOCK`] bytes into a small cache keyed by the
//! exact size and alignment, bounded in bytes (default 2 GiB, `EVOSAM_ALLOC_CACHE_MB` overrides it,
//! `0` disables the cache); the least recently cached block is released first. Everything else
//! goes straight to the system allocator.
//!
//! Process-global state, so it belongs to the binary (`src/main.rs` installs it with `#[global_allocator]`),
//! never to the library: a program that links `evosam` keeps its own allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Smallest block size that is cached.
pub const MIN_BLOCK: usize = 1 << 20;
const SLOTS: usize = 512;
const DEFAULT_CAP: usize = 2 << 30;
const UNSET: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Slot {
    ptr: usize, // 0: empty
    size: usize,
    align: usize,
    stamp: u64,
}

struct Cache {
    slots: [Slot; SLOTS],
    bytes: usize,
    clock: u64,
}

const EMPTY: Slot = Slot {
    ptr: 0,
    size: 0,
    align: 0,
    stamp: 0,
};

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    slots: [EMPTY; SLOTS],
    bytes: 0,
    clock: 0,
});
static CAP: AtomicUsize = AtomicUsize::new(UNSET);

fn cap() -> usize {
    let c = CAP.load(Ordering::Relaxed);
    if c != UNSET {
        return c;
    }
    // Reading the environment allocates (small blocks only: they bypass the cache).
    let c = std::env::var("EVOSAM_ALLOC_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|mb| mb.saturating_mul(1 << 20))
        .unwrap_or(DEFAULT_CAP);
    CAP.store(c, Ordering::Relaxed);
    c
}

/// The allocator (see the module documentation).
pub struct BlockCache;

impl BlockCache {
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut c = CACHE.lock().ok()?;
        let i = c
            .slots
            .iter()
            .position(|s| s.ptr != 0 && s.size == layout.size() && s.align == layout.align())?;
        let s = c.slots[i];
        c.slots[i] = EMPTY;
        c.bytes -= s.size;
        Some(s.ptr as *mut u8)
    }

    /// Cache a freed block; returns the blocks that must be released to the system.
    fn put(&self, ptr: *mut u8, layout: Layout, evicted: &mut [(usize, Layout); 8]) -> usize {
        let cap = cap();
        if layout.size() > cap / 2 {
            evicted[0] = (ptr as usize, layout);
            return 1;
        }
        let Ok(mut c) = CACHE.lock() else {
            evicted[0] = (ptr as usize, layout);
            return 1;
        };
        let mut n = 0;
        // Make room: release the oldest blocks until the new one fits in bytes and in slots.
        while n < evicted.len()
            && (c.bytes + layout.size() > cap || c.slots.iter().all(|s| s.ptr != 0))
        {
            let Some(i) = c
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.ptr != 0)
                .min_by_key(|(_, s)| s.stamp)
                .map(|(i, _)| i)
            else {
                break;
            };
            let s = c.slots[i];
            c.slots[i] = EMPTY;
            c.bytes -= s.size;
            // SAFETY: the slot held a block allocated by `System` with this layout.
            evicted[n] = (s.ptr, unsafe {
                Layout::from_size_align_unchecked(s.size, s.align)
            });
            n += 1;
        }
        let free = c.slots.iter().position(|s| s.ptr == 0);
        match free {
            Some(i) if c.bytes + layout.size() <= cap => {
                c.clock += 1;
                let stamp = c.clock;
                c.slots[i] = Slot {
                    ptr: ptr as usize,
                    size: layout.size(),
                    align: layout.align(),
                    stamp,
                };
                c.bytes += layout.size();
            }
            _ => {
                if n < evicted.len() {
                    evicted[n] = (ptr as usize, layout);
                    n += 1;
                } else {
                    drop(c);
                    // SAFETY: `ptr` was allocated by `System` with `layout`.
                    unsafe { System.dealloc(ptr, layout) };
                }
            }
        }
        n
    }
}

// SAFETY: every pointer this allocator hands out comes from `System` with the caller's exact layout: either
// straight from `System.alloc`/`alloc_zeroed`, or a cached block that `System` allocated earlier with the same
// size and alignment (the cache key) and that nobody else holds (it was removed from the cache under the lock
// before being returned). Every pointer it frees goes back to `System` with the layout it was allocated with, or
// into the cache with that layout. So `System`'s guarantees carry over unchanged.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(p) = self.take(layout) {
                return p;
            }
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(p) = self.take(layout) {
                // SAFETY: `p` is a live, unaliased block of exactly `layout.size()` bytes (taken from the cache).
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < MIN_BLOCK {
            // SAFETY: small blocks are never cached, so `ptr` came from `System` with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let mut ev = [(0usize, layout); 8];
        let n = self.put(ptr, layout, &mut ev);
        for &(p, l) in &ev[..n] {
            // SAFETY: each evicted entry is a block `System` allocated with layout `l`, now owned by nobody.
            unsafe { System.dealloc(p as *mut u8, l) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: every live block is a `System` block with exactly this layout, and the caller upholds
        // `realloc`'s contract for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_reused_and_zeroed() {
        let a = BlockCache;
        let layout = Layout::from_size_align(MIN_BLOCK * 3 + 17, 64).expect("layout");
        // SAFETY: non-zero size; every block is freed once, with the layout it was allocated with.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.add(5).write(7);
            a.dealloc(p, layout);
            // The block just freed is in the cache (unless another test thread took it first): zeroed on reuse.
            let q = a.alloc_zeroed(layout);
            assert!(!q.is_null());
            assert!(std::slice::from_raw_parts(q, layout.size())
                .iter()
                .all(|&b| b == 0));
            let r = a.realloc(q, layout, layout.size() + 1);
            assert!(!r.is_null());
            a.dealloc(
                r,
                Layout::from_size_align(layout.size() + 1, 64).expect("layout"),
            );
        }
    }

    /// A freed large block comes back for the next request of its exact layout (a layout no other test uses, so
    /// no other thread can take it in between), and `alloc_zeroed` zeroes a reused block.
    #[test]
    fn freed_block_is_reused_for_the_same_layout() {
        let a = BlockCache;
        let layout = Layout::from_size_align(MIN_BLOCK * 5 + 12_345, 4096).expect("layout");
        // SAFETY: non-zero size; every block is freed once, with the layout it was allocated with.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.add(100).write(42);
            a.dealloc(p, layout);
            let q = a.alloc(layout);
            assert_eq!(q, p, "the cached block was not reused");
            assert_eq!(
                q.add(100).read(),
                42,
                "a plain alloc reuses the block as it was"
            );
            a.dealloc(q, layout);
            let z = a.alloc_zeroed(layout);
            assert_eq!(z, p, "alloc_zeroed did not reuse the cached block");
            assert!(std::slice::from_raw_parts(z, layout.size())
                .iter()
                .all(|&b| b == 0));
            // another alignment is another key: not the cached block
            a.dealloc(z, layout);
            let other = Layout::from_size_align(layout.size(), 64).expect("layout");
            let o = a.alloc(other);
            assert_ne!(o, p);
            a.dealloc(o, other);
        }
    }
}
