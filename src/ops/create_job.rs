//! The body of a backup job: where each disk is read from (a shut-off
//! domain's image, held with QEMU's locks, or the export of a running
//! domain's pull-mode job), the copy of each disk into its target with its
//! digest index, and the end of the job (libvirt's job ended, the sources
//! checked unchanged, the record settled or the backup discarded).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt::connect::Connect;

use super::files::discard_failed;
use crate::engine::{bitmap, copy, disks, live};
use crate::error::{Error, ErrorCode, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::storage_pool;
use crate::image::disk::{Source, Target as ImageTarget};
use crate::image::qemu_lock::DiskLocks;
use crate::job::Job;
use crate::store::catalog::Catalog;
use crate::store::index::{IndexReader, IndexWriter};
use crate::store::locks::JobLock;
use crate::xml::backup::{BackupRecord, DiskRecord};
use crate::xml::domain::DomainDisk;

use super::create_targets::PlannedDisk;

/// How long ending a live backup's job keeps trying to reach libvirt again
/// when the connection broke (a restarted libvirtd answers within seconds).
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A live backup's pull-mode job, from its start to its end.
pub(super) struct LiveRun {
    dom: DomainRef,
    pull: live::PullJob,
}

impl LiveRun {
    /// Start libvirt's pull-mode job with the backup's scratch folder.
    pub(super) fn begin(
        catalog: &Catalog,
        dom: &DomainRef,
        record: &BackupRecord,
        disks: &[PlannedDisk],
        dom_disks: &[DomainDisk],
        quiesce: bool,
    ) -> Result<LiveRun> {
        let live_disks: Vec<live::LiveDisk> = disks
            .iter()
            .map(|p| live::LiveDisk {
                record: &p.record,
                since: p.since.as_deref(),
            })
            .collect();
        let scratch = catalog.scratch_dir(&record.uuid)?;
        live::PullJob::begin(dom, record, &live_disks, dom_disks, &scratch, quiesce)
            .map(|pull| LiveRun {
                dom: dom.clone(),
                pull,
            })
            .inspect_err(|_| catalog.remove_scratch(&record.uuid))
    }

    /// Run `call` on the domain; if it fails, once more on the domain
    /// opened again (waiting up to `RECONNECT_FOR` for libvirt to answer:
    /// the daemon may have been restarted during the copy), so that the
    /// job and checkpoint are still ended. A domain that no longer exists
    /// is not waited for.
    fn on_domain<T>(
        &self,
        record: &BackupRecord,
        call: impl Fn(&DomainRef) -> Result<T>,
    ) -> Result<T> {
        call(&self.dom).or_else(|e| {
            // A restarting daemon takes a few seconds to answer again.
            let deadline = std::time::Instant::now() + RECONNECT_FOR;
            let dom = loop {
                match crate::hv::libvirt::open_domain(&record.uri, &record.domain_uuid) {
                    Ok(dom) => break dom,
                    Err(again)
                        if !again.is(ErrorCode::NoDomain)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                    Err(_) => return Err(e),
                }
            };
            ::log::info!(
                "the call to libvirt failed ({}): trying again on a new connection",
                e.message
            );
            call(&dom)
        })
    }

    /// End libvirt's job of a backup whose copy is done (failing the
    /// backup if the job did not run all along) and remove its scratch
    /// folder.
    fn finish(&self, catalog: &Catalog, record: &BackupRecord) -> Result<()> {
        let scratch = catalog.scratch_path(&record.uuid);
        let ended = self.on_domain(record, |d| live::finish_pull_job(d, &scratch));
        Self::tidy(catalog, record);
        ended
    }

    /// End libvirt's job and remove its scratch folder.
    fn end(&self, catalog: &Catalog, record: &BackupRecord) -> Result<()> {
        let ended = self.on_domain(record, live::end_pull_job);
        Self::tidy(catalog, record);
        ended
    }

    /// Remove the scratch folder (and socket folder) of an ended job.
    fn tidy(catalog: &Catalog, record: &BackupRecord) {
        ::log::debug!("backup {}: libvirt's pull-mode job ended", record.uuid);
        catalog.remove_scratch(&record.uuid);
        live::remove_socket_dir(&record.uuid);
    }

    /// End a failed backup's job and remove its checkpoint.
    pub(super) fn fail(&self, catalog: &Catalog, record: &BackupRecord) {
        crate::warn_if_err!(
            self.end(catalog, record),
            "cannot end the pull-mode backup job"
        );
        if let Some(cp) = &record.checkpoint {
            crate::warn_if_err!(
                self.on_domain(record, |d| live::remove_checkpoint(d, cp)),
                "cannot remove checkpoint '{cp}'"
            );
        }
    }
}

/// Where a disk's data is read from.
pub(super) enum ReadFrom {
    /// The image of a shut-off domain, with the image and persistent
    /// bitmap that mark its changes when usable.
    Image(Source, Option<(PathBuf, String)>),
    /// The disk's export (by position) of the backup's pull-mode job.
    Export(usize),
}

/// A disk the library copies: where from, and the parent's index for an
/// incremental.
pub(super) struct CopySource {
    pub(super) from: ReadFrom,
    pub(super) parent: Option<IndexReader>,
}

/// Connections to each export of a pull-mode job, read by as many threads
/// of the copy engine: more requests in flight than the engine's two
/// default readers, which mostly wait for QEMU's replies. Chosen on a
/// loaded machine, where 1, 2, 4 and 8 could not be told apart cleanly;
/// the live full then measured 0.83x push mode + fsync (README "Benchmark").
const NBD_CONNECTIONS: usize = 4;

/// Ranges of a disk (offset, length), sorted.
type Ranges = Vec<(u64, u64)>;

/// The source of a disk and the ranges that may have changed since the
/// parent (`None`: every range).
fn open_source(
    from: ReadFrom,
    parent: Option<&IndexReader>,
    d: &DiskRecord,
    live: Option<&LiveRun>,
) -> Result<(Source, Option<Ranges>)> {
    match from {
        ReadFrom::Image(src, bitmap) => {
            let dirty = bitmap.zip(parent).and_then(|((image, name), p)| {
                // An unreadable bitmap costs time, not correctness: compare all.
                bitmap::dirty_ranges(&image, &name, src.size(), p.size()).ok()
            });
            Ok((src, dirty))
        }
        ReadFrom::Export(i) => {
            let live = live.ok_or_else(|| Error::internal("an export without a pull job"))?;
            // The copy engine reads with one thread per connection.
            let clients = (0..NBD_CONNECTIONS)
                .map(|_| live.pull.connect(i))
                .collect::<Result<Vec<_>>>()?;
            let size = clients[0].size();
            if size != d.virtual_size {
                return Err(Error::operation_failed(format!(
                    "the disk is {size} bytes in libvirt's backup job, {} when the backup was planned",
                    d.virtual_size
                )));
            }
            // The checkpoint's bitmap marks the changes: only those are read.
            let dirty = match parent {
                Some(p) => Some(bitmap::changed_ranges(&clients[0], size, p.size())?),
                None => None,
            };
            ::log::debug!(
                "disk '{}': reading libvirt's export '{}' over {} connections{}",
                d.name,
                i,
                NBD_CONNECTIONS,
                dirty.as_ref().map_or(String::new(), |r| format!(
                    ", {} bytes the checkpoint's bitmap marks",
                    r.iter().map(|(_, l)| l).sum::<u64>()
                ))
            );
            Ok((Source::nbd(clients)?, dirty))
        }
    }
}

/// Copy one disk of a backup and write its digest index (a delta against
/// the parent's for an incremental).
fn copy_disk(
    job: &Job,
    index_path: &Path,
    CopySource { from, parent }: CopySource,
    dst: ImageTarget,
    d: &DiskRecord,
    live: Option<&LiveRun>,
) -> Result<()> {
    let mut parent = parent;
    (|| {
        let (src, dirty) = open_source(from, parent.as_ref(), d, live)?;
        let parent_index = parent.as_ref().map(|p| p.path().to_path_buf());
        let baseline = copy::Baseline::of(parent.as_mut());
        let mut index =
            IndexWriter::create_delta(index_path, d.virtual_size, parent_index.as_deref())?;
        // Counted as the disk's (the job adds up its disks'), under the
        // job's rate limit.
        let progress = job.disk(&d.name);
        copy::copy_changes(&src, &dst, progress, baseline, &mut index, dirty.as_deref())?;
        index.finish()?;
        dst.finish(&d.target)?;
        ::log::debug!("disk '{}': copied", d.name);
        Ok::<(), Error>(())
    })()
    .map_err(|mut e| {
        e.message = format!("disk '{}': {}", d.name, e.message);
        e
    })
}

/// What a backup job's body works with besides its disks.
pub(super) struct CopyRun<'a> {
    pub(super) catalog: &'a Catalog,
    pub(super) dom: &'a DomainRef,
    pub(super) lock: JobLock,
    pub(super) conn: Option<Connect>,
    /// The pull-mode job of a live backup.
    pub(super) live: Option<LiveRun>,
}

/// The body of a backup job: copy every disk, end a live backup's
/// pull-mode job, then complete the record, or remove the checkpoint, the
/// targets and the record.
pub(super) fn run_copy(
    job: &Job,
    run: CopyRun,
    mut record: BackupRecord,
    sources: Vec<CopySource>,
    targets: Vec<ImageTarget>,
) -> Result<()> {
    let CopyRun {
        catalog,
        dom,
        lock,
        conn,
        live,
    } = run;
    // Held until the record is written: each source drops its own at the
    // end of its disk's copy.
    let locks: Vec<_> = sources
        .iter()
        .filter_map(|s| match &s.from {
            ReadFrom::Image(src, _) => src.locks(),
            ReadFrom::Export(_) => None,
        })
        .collect();
    let work: Vec<_> = sources
        .into_iter()
        .zip(targets)
        .zip(&record.disks)
        .collect();
    let copied = disks::copy_disks(work, |((source, dst), d)| {
        let index_path = catalog.backup_of(&record).index_path(&d.name);
        copy_disk(job, &index_path, source, dst, d, live.as_ref())
    });
    // The pull job ends before the record says anything: a completed
    // backup leaves no libvirt job behind.
    let copied = match &live {
        Some(l) if copied.is_ok() => l.finish(catalog, &record),
        None => copied.and_then(|()| check_sources_kept(dom, &locks)),
        _ => copied,
    };
    let (result, _guard, lock) = job.settle(catalog, &mut record, copied, lock);
    if result.is_err() {
        if let Some(l) = &live {
            l.fail(catalog, &record);
        }
        discard_failed(catalog, &record, conn.as_ref(), lock);
    } else if let Some(conn) = &conn {
        // Let libvirt see the volumes' real size and allocation.
        for (pool, _) in record.disks.iter().filter_map(|d| d.volume.as_ref()) {
            storage_pool::refresh(conn, pool);
        }
    }
    result
}

/// The end of a copy, before its record says completed: the domain did not
/// start, and every file read is as it was and still locked (see
/// `image::qemu_lock`); else the job fails and nothing is recorded.
fn check_sources_kept(dom: &DomainRef, locks: &[Arc<DiskLocks>]) -> Result<()> {
    if !dom.images_are_quiet(dom.is_active()?)? {
        return Err(Error::operation_failed(format!(
            "domain '{}' was started while its disks were copied; the backup is discarded",
            dom.name()?
        )));
    }
    locks.iter().try_for_each(|l| l.check_unchanged())
}
