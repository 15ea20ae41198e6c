//! The codecs of qcow2 compressed clusters, as QEMU writes and reads them:
//! zstd (compression type 1: one zstd frame per cluster) and zlib
//! (compression type 0: raw deflate, no header, with a 4 KiB window, which
//! is what QEMU's inflate accepts).

use std::io;

use crate::xml::backup::Compression;

/// zstd's level: 1, the fastest of the regular levels (QEMU uses the
/// library's default, 3; see README's benchmark for what each costs).
const ZSTD_LEVEL: i32 = 1;
/// zlib's level: QEMU's (`Z_DEFAULT_COMPRESSION`).
const ZLIB_LEVEL: u32 = 6;
/// QEMU's deflate window: 2^12 bytes.
const ZLIB_WINDOW_BITS: u8 = 12;

/// The codec of an image's compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Raw deflate: the header's compression type 0.
    Zlib,
    /// zstd: compression type 1 (incompatible feature bit 3 set).
    Zstd,
}

impl Codec {
    /// The codec a backup's `<compression>` asks for; none for `none`.
    pub(crate) fn of(c: Compression) -> Option<Codec> {
        match c {
            Compression::None => None,
            Compression::Zlib => Some(Codec::Zlib),
            Compression::Zstd => Some(Codec::Zstd),
        }
    }

    /// The qcow2 header's compression type byte.
    pub(crate) fn type_byte(self) -> u8 {
        match self {
            Codec::Zlib => 0,
            Codec::Zstd => 1,
        }
    }

    /// The codec of a header's compression type byte.
    pub(crate) fn from_type_byte(b: u8) -> io::Result<Codec> {
        match b {
            0 => Ok(Codec::Zlib),
            1 => Ok(Codec::Zstd),
            o => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown qcow2 compression type {o}"),
            )),
        }
    }
}

/// A compressor of one thread (its state is reused cluster after cluster).
pub(crate) enum Compressor {
    Zlib(Box<flate2::Compress>),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Compressor {
    pub(crate) fn new(codec: Codec) -> io::Result<Compressor> {
        Ok(match codec {
            Codec::Zlib => Compressor::Zlib(Box::new(flate2::Compress::new_with_window_bits(
                flate2::Compression::new(ZLIB_LEVEL),
                false,
                ZLIB_WINDOW_BITS,
            ))),
            Codec::Zstd => Compressor::Zstd(Box::new(zstd::bulk::Compressor::new(ZSTD_LEVEL)?)),
        })
    }

    /// Compress `input` into `out` (cleared first). False when the result
    /// would not be shorter than `input`: the cluster is then stored as it
    /// is (as QEMU does), and `out` holds nothing to use.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        // One byte short of the input: anything longer is not worth it.
        let room = input.len().saturating_sub(1);
        out.reserve(room);
        match self {
            Compressor::Zlib(c) => {
                c.reset();
                let st = c
                    .compress_vec(input, out, flate2::FlushCompress::Finish)
                    .map_err(io::Error::other)?;
                Ok(st == flate2::Status::StreamEnd && out.len() < input.len())
            }
            Compressor::Zstd(c) => {
                out.resize(room, 0);
                match c.compress_to_buffer(input, out.as_mut_slice()) {
                    Ok(n) => {
                        out.truncate(n);
                        Ok(true)
                    }
                    // Destination too small: it does not shrink.
                    Err(_) => Ok(false),
                }
            }
        }
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Decompress one cluster: `input` holds its compressed data and possibly
/// more (a descriptor counts whole sectors, and the next cluster's data may
/// follow); `out` is exactly one cluster and must be filled exactly.
pub(crate) fn decompress(codec: Codec, input: &[u8], out: &mut [u8]) -> io::Result<()> {
    match codec {
        Codec::Zlib => {
            let mut d = flate2::Decompress::new_with_window_bits(false, 15);
            d.decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(format!("bad deflate data: {e}")))?;
            match d.total_out() as usize == out.len() {
                true => Ok(()),
                false => Err(bad(format!(
                    "compressed cluster inflates to {} bytes, not {}",
                    d.total_out(),
                    out.len()
                ))),
            }
        }
        Codec::Zstd => {
            let frame = zstd::zstd_safe::find_frame_compressed_size(input).map_err(|e| {
                bad(format!(
                    "bad zstd frame: {}",
                    zstd::zstd_safe::get_error_name(e)
                ))
            })?;
            let mut d = zstd::bulk::Decompressor::new()?;
            let n = d
                .decompress_to_buffer(&input[..frame], out)
                .map_err(|e| bad(format!("bad zstd data: {e}")))?;
            match n == out.len() {
                true => Ok(()),
                false => Err(bad(format!(
                    "compressed cluster decompresses to {n} bytes, not {}",
                    out.len()
                ))),
            }
        }
    }
}
