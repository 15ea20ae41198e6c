//! New LUKS-encrypted qcow2 targets (see `image::luks`).

use std::fs::File;
use std::path::Path;

use super::{Target, TargetImage, cache_of, io_err};
use crate::error::Result;
use crate::image::file::{self as image_file, Kind};
use crate::image::luks::DEFAULT_ITERATIONS;
use crate::image::qcow2_compressed::CompressedWriter;
use crate::xml::backup::DiskFormat;

impl Target {
    /// Format `file` as `create_from` does a qcow2 image, but a LUKS
    /// encrypted one whose key slot `passphrase` opens (see
    /// `image::luks`; whole clusters, in guest order).
    pub(crate) fn create_encrypted(
        file: File,
        path: &Path,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        passphrase: &[u8],
    ) -> Result<Target> {
        image_file::check(&file, path, Kind::Regular, "cannot create target image")?;
        let cache = cache_of(&file, path)?;
        ::log::debug!(
            "formatting '{}' as encrypted qcow2 of {size} bytes",
            path.display()
        );
        let w =
            CompressedWriter::create_encrypted(file, size, backing, passphrase, DEFAULT_ITERATIONS)
                .map_err(io_err("cannot format target image", path))?;
        Ok(Target {
            img: TargetImage::Compressed(Box::new(w)),
            cache,
            created: true,
        })
    }
}
