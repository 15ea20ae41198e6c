//! Copy buffers aligned for direct I/O: an `O_DIRECT` write needs its
//! memory aligned to the device's block size, and a `Vec<u8>` of a few MiB
//! comes from `malloc` 16 bytes past a page boundary. Buffers are anonymous
//! mappings: page-aligned, and zero pages until written, so a window a
//! copy never fills (a small disk, a hole) costs no memory, as with
//! `calloc` (an aligned `alloc_zeroed` would write every page).

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every buffer: a page, which covers every block size a
/// Linux block device has (512 to 4096 bytes).
pub(crate) const ALIGN: usize = 4096;

/// A zero-filled, fixed-size byte buffer starting on a page boundary.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its mapping exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub(crate) fn zeroed(len: usize) -> AlignedBuf {
        let map_len = Self::map_len(len);
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; no existing memory is touched.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        };
        let Some(ptr) = ptr.ok().and_then(|p| NonNull::new(p.cast::<u8>())) else {
            let layout = std::alloc::Layout::from_size_align(map_len, ALIGN).expect("buffer size");
            std::alloc::handle_alloc_error(layout);
        };
        AlignedBuf { ptr, len }
    }

    fn map_len(len: usize) -> usize {
        len.max(1).next_multiple_of(ALIGN)
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: mapped in `zeroed` with this length, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), Self::map_len(self.len)) };
    }
}

/// Whether `buf` can be written with `O_DIRECT` at `offset`.
pub(crate) fn is_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(ALIGN)
        && buf.len().is_multiple_of(ALIGN)
        && offset.is_multiple_of(ALIGN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_zeroed_and_writable() {
        for len in [1, 4095, 4096, 4 << 20, (4 << 20) + 17] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(is_aligned(&b[..len / ALIGN * ALIGN], 0) || len < ALIGN);
            assert!(b.iter().all(|&x| x == 0));
            b[len - 1] = 7;
            assert_eq!(b[len - 1], 7);
        }
        let b = AlignedBuf::zeroed(8192);
        assert!(is_aligned(&b[4096..], 4096));
        assert!(!is_aligned(&b[1..4097], 4096));
        assert!(!is_aligned(&b[..4096], 512));
        assert!(!is_aligned(&b[..100], 0));
    }
}
