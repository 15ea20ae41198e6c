//! The copy engine: copies only the ranges of a source image that hold data
//! (or that differ from a parent's digest index) into a target, with a
//! fixed-size buffer, and plans and applies in-place restores.

use std::path::Path;

use crate::engine::background;
use crate::error::{Error, Result};
use crate::image::buffer::AlignedBuf;
use crate::image::disk::{Chain, Source, Target};
use crate::job::Progress;
use crate::store::index::{
    DIGEST_CHUNK, Digest, DigestSink, IndexReader, IndexWriter, UNHASHED, ZERO_DIGEST, digest,
    is_zero,
};
use crate::xml::backup::DiskFormat;

/// Copy buffer: the only per-disk data held in memory. 4 MiB keeps syscalls
/// few while bounding memory per job.
pub(crate) const COPY_CHUNK: u64 = 4 << 20;

/// What a copy compares the source against to decide what to write.
pub enum Baseline<'a> {
    /// A new, empty target: every chunk that is not all zeroes is written.
    Empty,
    /// A target whose backing file holds the disk this index describes:
    /// only chunks whose digest differs are written, zeroes included.
    Index(&'a mut IndexReader),
    /// A target whose content is unknown (a block device written in
    /// place): every chunk is written, zeroes included.
    Unknown,
}

impl<'a> Baseline<'a> {
    /// Against `parent`'s index if there is one, else a new, empty target.
    pub fn of(parent: Option<&'a mut IndexReader>) -> Self {
        parent.map_or(Baseline::Empty, Baseline::Index)
    }
}

/// Writes of a copy, gathered into runs so that adjacent chunks go out in
/// one call.
struct Writer<'a> {
    dst: &'a Target,
    progress: &'a Progress,
    /// Pending data run: start offset in the image and in the buffer.
    run: Option<(u64, usize, usize)>,
}

impl Writer<'_> {
    fn data(&mut self, buf: &[u8], window: u64, start: usize, end: usize) -> Result<()> {
        match &mut self.run {
            Some((_, _, e)) if *e == start => *e = end,
            _ => {
                self.flush(buf)?;
                self.run = Some((window + start as u64, start, end));
            }
        }
        Ok(())
    }

    fn flush(&mut self, buf: &[u8]) -> Result<()> {
        if let Some((offset, s, e)) = self.run.take() {
            let piece = background::write_piece();
            for at in (s..e).step_by(piece) {
                let end = e.min(at.saturating_add(piece));
                let pos = offset + (at - s) as u64;
                background::io(|| (self.dst.write_at(&buf[at..end], pos), true)).map_err(|e| {
                    Error::operation_failed(format!(
                        "cannot write target image at offset {pos}: {e}"
                    ))
                })?;
            }
            self.progress.add_written((e - s) as u64);
        }
        Ok(())
    }

    fn zeroes(&mut self, buf: &[u8], offset: u64, len: u64) -> Result<()> {
        self.flush(buf)?;
        self.dst.write_zeroes(offset, len).map_err(|e| {
            Error::operation_failed(format!(
                "cannot write zeroes to target image at offset {offset}: {e}"
            ))
        })
    }
}

/// Read `buf.len()` bytes at `offset` of `src`; false when the whole range
/// is a hole (and `buf` was left as it was).
fn fill_window(src: &Source, buf: &mut [u8], offset: u64) -> Result<bool> {
    src.fill(buf, offset)
}

/// The piece a rate-limited read pays for at a time: small enough that
/// the wait after each keeps the rate even and a cancel prompt.
const RATE_PIECE: usize = 512 << 10;

/// [`fill_window`] for a copy whose reads are paced: by housekeeping
/// (`pacer`, see `background`: each piece that held data is a paced piece
/// of I/O) or by the job's rate limit (`progress`, see
/// [`Progress::throttle`]). In pieces, each that held data paid for once
/// read: a piece that is all hole was not read and costs nothing; one
/// that holds some data counts whole.
fn fill_paced(
    src: &Source,
    buf: &mut [u8],
    offset: u64,
    pacer: Option<&background::Pacer>,
    progress: &Progress,
) -> Result<bool> {
    let limited = progress.rate_limit().is_some();
    if pacer.is_none() && !limited {
        return fill_window(src, buf, offset);
    }
    let piece = pacer.map_or(RATE_PIECE, background::Pacer::piece);
    let mut holes = Vec::new();
    let mut any = false;
    for (i, part) in buf.chunks_mut(piece).enumerate() {
        let at = offset + (i * piece) as u64;
        let read = match pacer {
            Some(pacer) => pacer.io(|| {
                let read = fill_window(src, part, at);
                let touched = matches!(read, Ok(true));
                (read, touched)
            }),
            None => fill_window(src, part, at),
        };
        if read? {
            any = true;
            progress.throttle(part.len() as u64)?;
        } else {
            holes.push(i);
        }
    }
    // A hole leaves its part as it was: zero it when the window has data.
    for i in holes.into_iter().filter(|_| any) {
        let end = buf.len().min((i + 1) * piece);
        buf[i * piece..end].fill(0);
    }
    Ok(any)
}

/// One window of a source image, read and hashed ahead of its use.
struct Window {
    offset: u64,
    len: usize,
    /// False when the whole window is a hole (`buf` then holds stale bytes).
    has_data: bool,
    buf: AlignedBuf,
    /// The digest of each `DIGEST_CHUNK` of the window.
    sums: Vec<Digest>,
    /// Chunks a dirty bitmap says did not change: not read, their digest
    /// is the parent's (only with a bitmap, else empty).
    clean: Vec<bool>,
}

impl Window {
    fn new() -> Window {
        Window {
            offset: 0,
            len: 0,
            has_data: false,
            buf: AlignedBuf::zeroed(COPY_CHUNK as usize),
            sums: Vec::with_capacity((COPY_CHUNK / DIGEST_CHUNK) as usize),
            clean: Vec::new(),
        }
    }

    fn is_clean(&self, k: usize) -> bool {
        self.clean.get(k).copied().unwrap_or(false)
    }

    /// Read and hash only the chunks of the window that `dirty` (sorted,
    /// chunk-aligned runs) touches; mark the others clean. Each chunk read
    /// that holds data is paid for under the rate limit.
    fn fill_dirty(
        &mut self,
        src: &Source,
        dirty: &[(u64, u64)],
        progress: &Progress,
    ) -> Result<()> {
        let (offset, len) = (self.offset, self.len as u64);
        self.clean.clear();
        self.sums.clear();
        self.has_data = true;
        let first = dirty.partition_point(|&(o, l)| o + l <= offset);
        for start in (0..len).step_by(DIGEST_CHUNK as usize) {
            let end = (start + DIGEST_CHUNK).min(len);
            let (a, b) = (offset + start, offset + end);
            let hit = dirty[first..]
                .iter()
                .take_while(|&&(o, _)| o < b)
                .any(|&(o, l)| o + l > a);
            self.clean.push(!hit);
            let part = &mut self.buf[start as usize..end as usize];
            self.sums.push(if !hit {
                ZERO_DIGEST
            } else if fill_window(src, part, a)? {
                progress.throttle(part.len() as u64)?;
                digest(part)
            } else {
                part.fill(0);
                ZERO_DIGEST
            });
        }
        Ok(())
    }
    /// Each digest chunk of the window: its range in `buf` and its digest.
    fn digests(&self) -> impl Iterator<Item = (usize, usize, Digest)> + '_ {
        self.sums.iter().enumerate().map(move |(i, d)| {
            let start = i * DIGEST_CHUNK as usize;
            (start, (start + DIGEST_CHUNK as usize).min(self.len), *d)
        })
    }

    /// The digest of each chunk; without `hash`, only zeroes told from
    /// data ([`UNHASHED`]).
    fn hash(&mut self, hash: bool) {
        self.clean.clear();
        self.sums.clear();
        for start in (0..self.len).step_by(DIGEST_CHUNK as usize) {
            let chunk = &self.buf[start..(start + DIGEST_CHUNK as usize).min(self.len)];
            self.sums.push(match (self.has_data, hash) {
                (false, _) => ZERO_DIGEST,
                (true, true) => digest(chunk),
                (true, false) if is_zero(chunk) => ZERO_DIGEST,
                (true, false) => UNHASHED,
            });
        }
    }
}

/// Threads that read and hash windows, taking turns: on two cores reading
/// (a copy out of the page cache, or a disk read) and hashing of the next
/// windows overlap each other and the use of the current one.
const READERS: usize = 2;

thread_local! {
    /// Set on the workers of a backup that copies several disks at once.
    static SHARING_CORES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Note that the calling thread copies one of several disks copied at
/// once: its copies then read with one thread, not `READERS`. Measured
/// (4 disks of 256 MiB in memory, 2 cores): two workers took 0.40 s with
/// two readers each and 0.35 s with one (one worker: 0.42 and 0.40 s);
/// six busy threads on two cores only switch more.
pub fn share_cores(sharing: bool) {
    SHARING_CORES.with(|c| c.set(sharing));
}

fn readers(src: &Source) -> usize {
    match SHARING_CORES.with(|c| c.get()) {
        true => 1,
        false => src.readers().unwrap_or(READERS),
    }
}
/// Buffers per reader: one being filled, one waiting. With the one in use,
/// a job holds at most 5 windows (20 MiB).
const WINDOWS_PER_READER: usize = 2;

/// Call `use_window` on each window of `src` in order, while reader
/// threads read and hash the next ones. Cancel is checked per window.
/// Reader `r` of `n`'s share of the copy: every `n`-th window, filled
/// into the buffers the consumer hands back, hashed if `hash`.
fn read_windows(
    src: &Source,
    (r, n): (usize, usize),
    (dirty, hash, progress): (Option<&[(u64, u64)]>, bool, &Progress),
    free_rx: &std::sync::mpsc::Receiver<Window>,
    full_tx: &std::sync::mpsc::SyncSender<Result<Window>>,
    pacer: Option<background::Pacer>,
) {
    let size = src.size();
    let mut offset = r as u64 * COPY_CHUNK;
    // A paced reader's reads go to the disk at its pace, not ahead of it.
    crate::image::cache::no_read_ahead(pacer.is_some());
    while offset < size {
        // The consumer has stopped when it drops its channels.
        let Ok(mut w) = free_rx.recv() else { return };
        w.offset = offset;
        w.len = COPY_CHUNK.min(size - offset) as usize;
        // One residency check per window: source pages the copy brings in
        // are dropped after use, pages the host had cached stay.
        let len = w.len as u64;
        let cold = src.is_cold(offset, len);
        let filled = match dirty {
            Some(runs) => w.fill_dirty(src, runs, progress).map(|()| w),
            None => {
                let buf = &mut w.buf[..w.len];
                fill_paced(src, buf, offset, pacer.as_ref(), progress).map(|has_data| {
                    w.has_data = has_data;
                    w.hash(hash);
                    w
                })
            }
        };
        if cold {
            src.drop_cached(offset, len);
        }
        let failed = filled.is_err();
        if full_tx.send(filled).is_err() || failed {
            return;
        }
        offset += n as u64 * COPY_CHUNK;
    }
}

fn for_each_window(
    src: &Source,
    progress: &Progress,
    use_window: impl FnMut(&Window) -> Result<()>,
) -> Result<()> {
    for_each_window_of(src, progress, (None, true), use_window)
}

/// [`for_each_window`], reading only the chunks `dirty` touches if given
/// (and hashing them), else every chunk, hashed if `hash`.
fn for_each_window_of(
    src: &Source,
    progress: &Progress,
    (dirty, hash): (Option<&[(u64, u64)]>, bool),
    mut use_window: impl FnMut(&Window) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
    let size = src.size();
    let mut full: Vec<Receiver<Result<Window>>> = Vec::new();
    let mut free: Vec<Sender<Window>> = Vec::new();
    std::thread::scope(|scope| {
        let n = readers(src);
        for r in 0..n {
            let (full_tx, full_rx) = sync_channel::<Result<Window>>(WINDOWS_PER_READER);
            let (free_tx, free_rx) = channel::<Window>();
            for _ in 0..WINDOWS_PER_READER {
                let _ = free_tx.send(Window::new());
            }
            full.push(full_rx);
            free.push(free_tx);
            let pacer = background::pacer();
            let what = (dirty, hash, progress);
            scope.spawn(move || read_windows(src, (r, n), what, &free_rx, &full_tx, pacer));
        }
        let result = (|| {
            let windows = size.div_ceil(COPY_CHUNK);
            for k in 0..windows as usize {
                progress.check_cancel()?;
                let w = full[k % n]
                    .recv()
                    .map_err(|_| Error::internal("a reader thread stopped"))??;
                use_window(&w)?;
                progress.add_processed(w.len as u64);
                let _ = free[k % n].send(w);
            }
            Ok(())
        })();
        // Unblock the readers if the consumer stopped early.
        full.clear();
        free.clear();
        result
    })
}

/// Copy `src` into `dst`, writing what `baseline` says differs, and record
/// every chunk's digest in `index`. Progress and cancel are per 4 MiB window.
pub fn copy_image(
    src: &Source,
    dst: &Target,
    progress: &Progress,
    baseline: Baseline,
    index: &mut dyn DigestSink,
) -> Result<()> {
    copy_changes(src, dst, progress, baseline, index, None)
}

/// [`copy_image`] where a dirty bitmap tells which chunks may differ from
/// `baseline` (sorted, chunk-aligned runs): only those are read; the
/// others keep the parent's digest. A copy whose `index` drops the
/// digests and that compares against no parent index does not hash.
pub fn copy_changes(
    src: &Source,
    dst: &Target,
    progress: &Progress,
    mut baseline: Baseline,
    index: &mut dyn DigestSink,
    dirty: Option<&[(u64, u64)]>,
) -> Result<()> {
    let size = src.size();
    let mut w = Writer {
        dst,
        progress,
        run: None,
    };
    let hash = index.wants_digests() || matches!(baseline, Baseline::Index(_));
    for_each_window_of(src, progress, (dirty, hash), |win| {
        let buf = &win.buf;
        for (k, (start, end, d)) in win.digests().enumerate() {
            let old = match &mut baseline {
                Baseline::Empty => Some(ZERO_DIGEST),
                // Past the parent's end the target reads zeroes too.
                Baseline::Index(r) => Some(r.next_digest()?.unwrap_or(ZERO_DIGEST)),
                Baseline::Unknown => None,
            };
            let d = match old {
                Some(o) if win.is_clean(k) => o,
                _ => d,
            };
            index.push(&d)?;
            if old != Some(d) {
                if d == ZERO_DIGEST {
                    w.zeroes(buf, win.offset + start as u64, (end - start) as u64)?;
                } else {
                    w.data(buf, win.offset, start, end)?;
                }
            }
        }
        w.flush(buf)?;
        dst.written(win.offset, win.offset + win.len as u64);
        crate::test_pause!("copy-window");
        Ok(())
    })?;
    // A source that shrank while it was read would have read as holes.
    let now = src
        .current_size()
        .map_err(|e| Error::operation_failed(format!("cannot stat source image: {e}")))?;
    if now != size {
        return Err(Error::operation_failed(format!(
            "source image changed size during the backup ({size} -> {now} bytes)"
        )));
    }
    Ok(())
}

/// Record the digest of every chunk of `src` (a backup the library did not
/// copy itself: QEMU wrote it).
pub fn build_index(src: &Source, out: &mut dyn DigestSink) -> Result<()> {
    read_digests(src, &Progress::default(), out)
}

/// Read all of `src` and hand every chunk's digest to `out` (an index
/// writer, or a verifier that compares them), counting into `progress`.
pub fn read_digests(src: &Source, progress: &Progress, out: &mut dyn DigestSink) -> Result<()> {
    for_each_window(src, progress, |win| {
        win.digests().try_for_each(|(_, _, d)| out.push(&d))
    })
}

/// The ranges of `src` whose chunks differ from the disk `parent` indexes
/// (past its end: chunks that are not zero), merged into runs.
pub fn changed_ranges(src: &Source, parent: &mut IndexReader) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for_each_window(src, &Progress::default(), |win| {
        for (start, end, d) in win.digests() {
            let old = parent.next_digest()?.unwrap_or(ZERO_DIGEST);
            if old == d {
                continue;
            }
            let (off, len) = (win.offset + start as u64, (end - start) as u64);
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => runs.push((off, len)),
            }
        }
        Ok(())
    })?;
    Ok(runs)
}

/// Chunks of an existing disk that differ from a backup, one bit each.
pub struct Rewrite {
    bits: Vec<u64>,
    /// How many chunks differ.
    pub chunks: u64,
}

impl Rewrite {
    fn set(&mut self, i: u64) {
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
        self.chunks += 1;
    }

    fn get(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// Read `len` bytes at `offset` of the backup and check them against `want`.
fn read_verified(backup: &Source, buf: &mut [u8], offset: u64, want: &[Digest]) -> Result<()> {
    if !fill_window(backup, buf, offset)? {
        buf.fill(0);
    }
    for (i, (c, w)) in buf.chunks(DIGEST_CHUNK as usize).zip(want).enumerate() {
        if digest(c) != *w {
            return Err(Error::operation_failed(format!(
                "backup data does not match its digest index at offset {}",
                offset + i as u64 * DIGEST_CHUNK
            )));
        }
    }
    Ok(())
}

/// First pass of an in-place restore, which writes nothing: hash `disk`
/// chunk by chunk against the backup's index `want`, and read every chunk
/// that differs from `backup`, checking it against the index. Only when this
/// succeeds is the disk touched.
pub fn plan_rewrite(
    backup: &Source,
    want: &mut IndexReader,
    disk: &Source,
    progress: &Progress,
) -> Result<Rewrite> {
    let size = want.size();
    let total = crate::store::index::chunks(size);
    let mut plan = Rewrite {
        bits: vec![0; total.div_ceil(64) as usize],
        chunks: 0,
    };
    let mut check = vec![0u8; DIGEST_CHUNK as usize];
    let mut i = 0u64;
    for_each_window(disk, progress, |win| {
        for (start, end, have) in win.digests() {
            let w = want.next_digest()?.unwrap_or(ZERO_DIGEST);
            if have != w {
                read_verified(
                    backup,
                    &mut check[..end - start],
                    win.offset + start as u64,
                    &[w],
                )?;
                plan.set(i);
            }
            i += 1;
        }
        Ok(())
    })?;
    Ok(plan)
}

/// Second pass of an in-place restore: write the chunks `plan` found
/// different, from `backup` into `dst`.
pub fn apply_rewrite(
    backup: &Source,
    want: &mut IndexReader,
    dst: &Target,
    plan: &Rewrite,
    progress: &Progress,
) -> Result<()> {
    let size = want.size();
    let mut buf = AlignedBuf::zeroed(COPY_CHUNK as usize);
    let mut w = Writer {
        dst,
        progress,
        run: None,
    };
    let per_window = COPY_CHUNK / DIGEST_CHUNK;
    let mut window = 0u64;
    let mut digests: Vec<Digest> = Vec::with_capacity(per_window as usize);
    while window < size {
        let len = COPY_CHUNK.min(size - window) as usize;
        let first = window / DIGEST_CHUNK;
        let n = (len as u64).div_ceil(DIGEST_CHUNK);
        digests.clear();
        for _ in 0..n {
            digests.push(want.next_digest()?.unwrap_or(ZERO_DIGEST));
        }
        let dirty: Vec<u64> = (0..n).filter(|k| plan.get(first + k)).collect();
        if let (Some(&lo), Some(&hi)) = (dirty.first(), dirty.last()) {
            // Read only the span that holds the differing chunks.
            let s = (lo * DIGEST_CHUNK) as usize;
            let e = (((hi + 1) * DIGEST_CHUNK) as usize).min(len);
            read_verified(
                backup,
                &mut buf[s..e],
                window + s as u64,
                &digests[lo as usize..],
            )?;
            for &k in &dirty {
                let cs = (k * DIGEST_CHUNK) as usize;
                let ce = (cs + DIGEST_CHUNK as usize).min(len);
                if digests[k as usize] == ZERO_DIGEST {
                    w.zeroes(&buf, window + cs as u64, (ce - cs) as u64)?;
                } else {
                    w.data(&buf, window, cs, ce)?;
                }
            }
            w.flush(&buf)?;
            dst.written(window, window + len as u64);
        }
        window += len as u64;
    }
    Ok(())
}

/// Write the digest index of the image at `image` (read through `chain`)
/// to `path`, through a temporary file so that a cut-short build leaves no
/// index behind.
pub fn write_index_file(path: &Path, image: &Path, format: DiskFormat, chain: Chain) -> Result<()> {
    let src = Source::open(image, format, chain)?;
    let tmp = path.with_extension("b3.tmp");
    let built = IndexWriter::create(&tmp, src.size()).and_then(|mut w| {
        build_index(&src, &mut w)?;
        w.finish()
    });
    built
        .and_then(|()| crate::store::index::install(&tmp, path))
        .inspect_err(|_| crate::store::index::discard(&tmp))
}
