//! Tests of the targets' writes, direct and buffered.

use super::*;
use crate::image::buffer::AlignedBuf;

/// A thread that asked for direct targets gets them on a disk file
/// system (its aligned writes leave nothing in the page cache); on a
/// disk and on tmpfs, odd tails, unaligned buffers, zeroes and data
/// read back as written.
#[test]
fn direct_targets_where_allowed_and_the_same_bytes_either_way() {
    const SIZE: u64 = (3 << 20) + 1234;
    use_direct_targets();
    for root in ["/var/tmp", "/dev/shm"] {
        let Ok(dir) = tempfile::tempdir_in(root) else {
            continue;
        };
        for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
            let path = dir.path().join(format!("t.{}", format.as_str()));
            let t = Target::create(&path, format, SIZE, None, false).unwrap();
            if let (TargetImage::Raw { direct, .. }, "/var/tmp") = (&t.img, root) {
                assert!(direct.is_some(), "no O_DIRECT on {root}");
            }
            let mut data = AlignedBuf::zeroed(1 << 20);
            data.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
            t.write_at(&data, 1 << 20).unwrap();
            t.write_at(&data[..1234], SIZE - 1234).unwrap();
            t.write_at(&data[7..4096 + 7], 5000).unwrap();
            t.write_zeroes(1 << 20, 64 << 10).unwrap();
            if let (TargetImage::Raw { file, .. }, "/var/tmp") = (&t.img, root) {
                assert!(
                    cache::is_cold(file, 2 << 20, 1 << 20),
                    "direct writes were cached"
                );
            }
            t.finish(&path).unwrap();

            let mut want = vec![0u8; SIZE as usize];
            want[1 << 20..2 << 20].copy_from_slice(&data);
            want[(SIZE - 1234) as usize..].copy_from_slice(&data[..1234]);
            want[5000..5000 + 4096].copy_from_slice(&data[7..4096 + 7]);
            want[1 << 20..(1 << 20) + (64 << 10)].fill(0);
            let src = Source::open(&path, format, Chain::None).unwrap();
            let mut got = vec![0u8; SIZE as usize];
            src.read_at(&mut got, 0).unwrap();
            assert!(got == want, "{root} {}: bytes differ", format.as_str());
        }
    }
}
