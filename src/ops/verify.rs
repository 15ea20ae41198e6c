//! Verification of a stored backup: every disk is read through its chain,
//! as a restore reads it, and each 64 KiB chunk is checked against the
//! digest index recorded at backup time (the same `IndexVerifier` a restore
//! uses). Nothing is written, except the index itself the first time a
//! backup written by QEMU is read (see `ensure_index`). A backup the
//! library copied whose index is missing cannot be verified: that is an
//! error, not an index rebuilt from the image (see `verified_index`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

use uuid::Uuid;

use crate::engine::copy::read_digests;
use crate::error::{Error, ErrorCode, Result};
use crate::image::disk::{Chain, Source};
use crate::job::Progress;
use crate::store::catalog::Catalog;
use crate::store::index::{IndexReader, IndexVerifier};
use crate::xml::backup::{BackupRecord, BackupState};

/// A verification running in this process: what `GetParameters` and
/// `AbortJob` on the same backup see.
#[derive(Default)]
pub(crate) struct Run {
    progress: Progress,
    total: AtomicU64,
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

static RUNNING: LazyLock<Mutex<HashMap<Uuid, Arc<Run>>>> = LazyLock::new(Default::default);

/// Whether the last successful verification of each backup in this process
/// recorded its digest index (a backup without one, made by an earlier
/// version): `verify.recorded`.
static RECORDED: LazyLock<Mutex<HashMap<Uuid, bool>>> = LazyLock::new(Default::default);

/// `verify.recorded` once a verification of `backup` succeeded in this
/// process: whether it recorded the digest index it then checked.
pub(crate) fn recorded(backup: &Uuid) -> Option<bool> {
    RECORDED.lock().unwrap().get(backup).copied()
}

/// Removes the run from the registry and wakes aborters, however `verify` ends.
struct Registered(Uuid, Arc<Run>);

impl Drop for Registered {
    fn drop(&mut self) {
        RUNNING.lock().unwrap().remove(&self.0);
        *self.1.ended.lock().unwrap() = true;
        self.1.ended_cv.notify_all();
    }
}

/// `verify.bytes.total` and `verify.bytes.processed` while a verification
/// of `backup` runs in this process.
pub(crate) fn parameters(backup: &Uuid) -> Vec<(&'static str, u64)> {
    let Some(run) = RUNNING.lock().unwrap().get(backup).cloned() else {
        return Vec::new();
    };
    vec![
        ("verify.bytes.total", run.total.load(Ordering::Relaxed)),
        (
            "verify.bytes.processed",
            run.progress.processed.load(Ordering::Relaxed),
        ),
    ]
}

/// Stop a verification of `backup` running in this process and wait until
/// it has returned; `None` when there is none.
pub(crate) fn abort(backup: &Uuid) -> Option<Result<()>> {
    let run = RUNNING.lock().unwrap().get(backup).cloned()?;
    run.progress.cancel.store(true, Ordering::Relaxed);
    let mut ended = run.ended.lock().unwrap();
    while !*ended {
        ended = run.ended_cv.wait(ended).unwrap();
    }
    Some(Ok(()))
}

/// Put the disk's name into an error, keeping libvirt's message prefix first.
fn in_disk(disk: &str, mut e: Error) -> Error {
    let prefix = "operation failed: ";
    e.message = match e.message.strip_prefix(prefix) {
        Some(rest) => format!("{prefix}disk '{disk}': {rest}"),
        None => format!("disk '{disk}': {}", e.message),
    };
    e
}

/// `virDomainBackupVerify` of the backup `rec` describes; the bytes read.
pub(crate) fn verify(rec: &BackupRecord) -> Result<u64> {
    if rec.state != BackupState::Completed {
        return Err(Error::operation_invalid(format!(
            "backup '{}' is not completed",
            rec.uuid
        )));
    }
    let catalog = Catalog::open()?;
    super::moved::check(&catalog, rec)?;
    // An encrypted backup's keys, read again from libvirt.
    let find = |u: &Uuid| super::recovery::find(&catalog, u).ok().flatten();
    let _keys = super::keys::lend_chain(rec, &find)?;
    // Open every disk first: the total is known before anyone can ask.
    let run = Arc::new(Run::default());
    let mut sources = Vec::new();
    for d in &rec.disks {
        let chain = catalog
            .recorded_chain(rec, &d.name)
            .map_err(|e| in_disk(&d.name, e))?;
        let src = Source::open(&d.target, d.format, Chain::Recorded(&chain))
            .map_err(|e| in_disk(&d.name, e))?;
        run.total.fetch_add(src.size(), Ordering::Relaxed);
        sources.push((d, src));
    }
    {
        let mut running = RUNNING.lock().unwrap();
        if running.contains_key(&rec.uuid) {
            return Err(Error::operation_invalid(format!(
                "backup '{}' is already being verified",
                rec.uuid
            )));
        }
        running.insert(rec.uuid, Arc::clone(&run));
    }
    let _registered = Registered(rec.uuid, Arc::clone(&run));
    let mut recorded = false;
    for (d, src) in &sources {
        let checked = (|| {
            recorded |= !catalog.backup_of(rec).index_path(&d.name).exists();
            let index = IndexReader::open(&super::verified_index(&catalog, rec, &d.name)?)?;
            if index.size() != src.size() {
                return Err(Error::operation_failed(format!(
                    "the image holds {} bytes, its digest index describes {}",
                    src.size(),
                    index.size()
                )));
            }
            read_digests(src, &run.progress, &mut IndexVerifier::new(index))
        })();
        checked.map_err(|e| {
            if e.is(ErrorCode::OperationAborted) {
                Error::aborted(format!("verification of backup '{}' stopped", rec.uuid))
            } else {
                in_disk(&d.name, e)
            }
        })?;
    }
    RECORDED.lock().unwrap().insert(rec.uuid, recorded);
    Ok(run.progress.processed.load(Ordering::Relaxed))
}
