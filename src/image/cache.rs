//! Keeping copies out of the host's page cache.
//!
//! A backup streams gigabytes the host will not read again soon. Written
//! buffered and left alone, they evict the host's working set, and filling
//! fresh page-cache folios is itself the slowest part of the copy here
//! (~60 % of a buffered 4 MiB pwrite is the kernel's copy into new folios).
//! Drop-behind keeps the written data's footprint to a few windows: each
//! range written is pushed to writeback at once (`sync_file_range` WRITE),
//! and a range [`LAG`] bytes older is waited for and dropped
//! (`posix_fadvise` DONTNEED), so pages are recycled instead of allocated.
//! It needs no alignment, works on every file system, and where it cannot
//! apply (tmpfs: nothing to write back, pages are the file) the calls are
//! harmless no-ops, which is the buffered fallback.
//!
//! Source reads: pages a copy brings into the cache are dropped after use,
//! pages that were cached before it are left alone (the host may be using
//! them), see [`is_cold`].

use std::collections::VecDeque;
use std::fs::File;
use std::num::NonZeroU64;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use rustix::fs::Advice;

/// Bytes written but not yet dropped: enough writeback in flight to keep a
/// busy disk's queue full (a shared disk has long latencies), and what
/// bounds the page cache a copy holds (under 256 MiB for any size).
pub(crate) const LAG: u64 = 128 << 20;

/// Drop-behind state of one file being written.
pub(crate) struct DropBehind {
    file: File,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Ranges handed to writeback, oldest first, and their total length.
    pending: VecDeque<(u64, u64)>,
    pending_bytes: u64,
    /// End of the file at the last window (appending formats: qcow2).
    last_end: u64,
    /// The kernel refused sync_file_range: stop asking.
    off: bool,
}

impl DropBehind {
    /// Track `file` (a second handle on the file being written).
    pub(crate) fn new(file: File) -> DropBehind {
        let last_end = file.metadata().map(|m| m.len()).unwrap_or(0);
        DropBehind {
            file,
            state: Mutex::new(State {
                last_end,
                ..State::default()
            }),
        }
    }

    /// `offset..end` of the file was just written.
    pub(crate) fn written(&self, offset: u64, end: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.off || end <= offset {
            return;
        }
        if sync_range(
            &self.file,
            offset,
            end - offset,
            libc::SYNC_FILE_RANGE_WRITE,
        ) != 0
        {
            s.off = true;
            return;
        }
        s.pending.push_back((offset, end));
        s.pending_bytes += end - offset;
        while s.pending_bytes > LAG {
            let Some((a, b)) = s.pending.pop_front() else {
                break;
            };
            s.pending_bytes -= b - a;
            self.drop_range(a, b);
        }
    }

    /// Whatever was appended to the file since the last call was written
    /// (qcow2 allocates clusters at the end of the file).
    pub(crate) fn appended(&self) {
        let Ok(end) = self.file.metadata().map(|m| m.len()) else {
            return;
        };
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut s.last_end, end)
        };
        self.written(start.min(end), end);
    }

    /// After the final sync: drop what is still cached of the written
    /// ranges, or of the whole file when it is one the copy created.
    pub(crate) fn finish(&self, whole_file: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if whole_file {
            advise(&self.file, 0, 0, Advice::DontNeed);
        } else {
            for (a, b) in s.pending.drain(..) {
                advise(&self.file, a, b - a, Advice::DontNeed);
            }
        }
        s.pending.clear();
        s.pending_bytes = 0;
    }

    fn drop_range(&self, a: u64, b: u64) {
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        sync_range(&self.file, a, b - a, wait);
        advise(&self.file, a, b - a, Advice::DontNeed);
    }
}

/// Source-side drop-behind for a file read with `pread`: before a range is
/// read, [`is_cold`] tells whether any of it is cached; if none was, the
/// reader drops it once read ([`drop_cached`]), so a backup of a cold disk
/// leaves the cache as it found it and a warm one's pages stay.
pub(crate) fn is_cold(file: &File, offset: u64, len: u64) -> bool {
    let page = rustix::param::page_size().max(4096) as u64;
    if len == 0 {
        return false;
    }
    let start = offset / page * page;
    let span = (offset + len - start) as usize;
    let mut vec = vec![0u8; span.div_ceil(page as usize)];
    // SAFETY: a new shared read-only mapping of our own open file at an
    // address the kernel picks; it overlaps nothing of ours.
    let map = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            span,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            file,
            start,
        )
    };
    let Ok(map) = map else {
        return false;
    };
    // SAFETY: `map` is the `span`-byte mapping made above, never
    // dereferenced (mincore only reads the page tables of the range), and
    // `vec` has one byte per page of it.
    let ok = unsafe { libc::mincore(map, span, vec.as_mut_ptr()) } == 0;
    // SAFETY: the mapping made above, unmapped once; nothing refers to it.
    let _ = unsafe { rustix::mm::munmap(map, span) };
    ok && vec.iter().all(|v| v & 1 == 0)
}

/// Drop `offset..offset+len` of `file` from the page cache.
pub(crate) fn drop_cached(file: &File, offset: u64, len: u64) {
    advise(file, offset, len, Advice::DontNeed);
}

/// Tell the kernel `file` is read front to back (larger read-ahead).
pub(crate) fn sequential(file: &File) {
    advise(file, 0, 0, Advice::Sequential);
}

thread_local! {
    static NO_READ_AHEAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling thread's reads bring in only what they ask for (a
/// housekeeping merge and its readers): read-ahead (8 MiB here, twice that
/// for a file read `sequential`) sent the disk 4 MiB reads well ahead of
/// the pace, which another job's syncs then waited behind. The advice
/// goes on each file before its first read: read-ahead that a metadata
/// read starts marks pages from which later reads go on reading ahead,
/// whatever the advice by then.
pub(crate) fn no_read_ahead(on: bool) {
    NO_READ_AHEAD.with(|c| c.set(on));
}

/// Before the calling thread reads `file`: no read-ahead on it if the
/// thread asked for none (`no_read_ahead`).
pub(crate) fn before_read(file: &File) {
    if NO_READ_AHEAD.with(|c| c.get()) {
        advise(file, 0, 0, Advice::Random);
    }
}

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> i32 {
    // SAFETY: plain syscall on an fd we own.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) }
}

/// Advice only: errors change nothing the copy relies on.
fn advise(file: &File, offset: u64, len: u64, advice: Advice) {
    let _ = rustix::fs::fadvise(file, offset, NonZeroU64::new(len), advice);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Written ranges leave the cache once `LAG` bytes newer ones were
    /// written, the rest at `finish`; the data stays as written. On /var/tmp
    /// (a disk) and /dev/shm (tmpfs: pages are the file, the calls change
    /// nothing and the file stays whole).
    #[test]
    fn drop_behind_empties_the_cache_and_keeps_the_data() {
        for root in ["/var/tmp", "/dev/shm"] {
            let Ok(dir) = tempfile::tempdir_in(root) else {
                continue;
            };
            let path = dir.path().join("t");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let db = DropBehind::new(file.try_clone().unwrap());
            let win = 4u64 << 20;
            let buf: Vec<u8> = (0..win).map(|i| (i % 251) as u8).collect();
            let n = (LAG / win) * 2;
            for k in 0..n {
                file.write_all_at(&buf, k * win).unwrap();
                db.written(k * win, (k + 1) * win);
            }
            let tmpfs = root == "/dev/shm";
            // The first half is long gone from the cache; the last window is not yet.
            assert_eq!(is_cold(&file, 0, win), !tmpfs, "{root}");
            assert!(!is_cold(&file, (n - 1) * win, win), "{root}");
            file.sync_all().unwrap();
            db.finish(true);
            assert_eq!(is_cold(&file, (n - 1) * win, win), !tmpfs, "{root}");
            let mut back = vec![0u8; win as usize];
            file.read_exact_at(&mut back, (n / 2) * win).unwrap();
            assert_eq!(back, buf);
            // A range read while cold is dropped again.
            if !tmpfs {
                drop_cached(&file, 0, 0);
                assert!(is_cold(&file, 0, win));
                file.read_exact_at(&mut back, 0).unwrap();
                assert!(!is_cold(&file, 0, win));
                drop_cached(&file, 0, win);
                assert!(is_cold(&file, 0, win));
            }
        }
    }
}
