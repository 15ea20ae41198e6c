//! What `info`, `list` and `status` show of a backup beyond its XML: the
//! size each disk's target takes on disk (stored) and the disk's own
//! (virtual) size, a readable summary, the job's parameters in the words
//! `list` uses, and errors as JSON for `--json`.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use clap::Args;
use serde_json::json;

use crate::api::{self, ApiError, Backup, Param};
use crate::info::{self, BackupInfo, DiskInfo};
use crate::{Ctx, Res, info_of};

#[derive(Args)]
pub(crate) struct InfoArgs {
    /// A backup UUID, or an unambiguous prefix of one (at least 4 characters)
    uuid: String,
    /// Print the backup's XML description instead of the summary
    #[arg(long)]
    xml: bool,
}

/// What the target file of a disk takes on disk: allocated blocks x 512,
/// as `du` counts (an incremental's own delta, not its chain); `None` when
/// it cannot be stat'ed (no file target, another host's path, no access).
pub(crate) fn stored_size(path: &str) -> Option<u64> {
    if path.is_empty() {
        return None;
    }
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// The disk size (virtual size) of the image at `path` in `format`, the
/// format the backup records (never probed): a qcow2 image's header says
/// it (bytes 24..32, big-endian, after the magic), a raw image is as big
/// as its file (or device).
pub(crate) fn image_virtual_size(path: &str, format: &str) -> Option<u64> {
    if path.is_empty() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    match format {
        "qcow2" => {
            let mut h = [0u8; 32];
            f.read_exact(&mut h).ok()?;
            if &h[..4] != b"QFI\xfb" {
                return None;
            }
            Some(u64::from_be_bytes(h[24..32].try_into().ok()?))
        }
        "raw" => f.seek(SeekFrom::End(0)).ok(),
        _ => None,
    }
}

/// Sizes of one disk: (virtual, stored). The virtual size from the
/// target image, else from the job's `disk.<i>.bytes.total`.
fn disk_sizes(d: &DiskInfo, params: &[(String, Param)], i: usize) -> (Option<u64>, Option<u64>) {
    let from_params = || {
        let name = api::param(params, &format!("disk.{i}.name"));
        match name {
            Some(Param::Str(n)) if *n == d.name => {
                api::param(params, &format!("disk.{i}.bytes.total")).and_then(Param::as_u64)
            }
            _ => None,
        }
        .filter(|&v| v > 0)
    };
    let virt = image_virtual_size(&d.target, &d.format).or_else(from_params);
    (virt, stored_size(&d.target))
}

/// A backup's description with each disk's sizes.
pub(crate) struct Described {
    pub info: BackupInfo,
    /// (virtual, stored) of each disk of `info.disks`.
    pub sizes: Vec<(Option<u64>, Option<u64>)>,
}

impl Described {
    pub(crate) fn of(b: &Backup) -> Res<Described> {
        let params = b.parameters().unwrap_or_default();
        Ok(Described::new(info_of(b)?, &params))
    }

    /// With the sizes the images (else `params`, the job's) say.
    pub(crate) fn new(info: BackupInfo, params: &[(String, Param)]) -> Described {
        let sizes = (info.disks.iter().enumerate())
            .map(|(i, d)| disk_sizes(d, params, i))
            .collect();
        Described { info, sizes }
    }

    /// The backup's stored size: the sum of its disks' (`None` if no disk's
    /// is known).
    pub(crate) fn stored(&self) -> Option<u64> {
        sum(self.sizes.iter().map(|s| s.1))
    }

    pub(crate) fn virtual_size(&self) -> Option<u64> {
        sum(self.sizes.iter().map(|s| s.0))
    }

    /// `BackupInfo::to_json` with the sizes: `stored_size` and
    /// `virtual_size` (bytes; null when unknown) for the backup and each disk.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut j = self.info.to_json();
        j["stored_size"] = json!(self.stored());
        j["virtual_size"] = json!(self.virtual_size());
        if let Some(disks) = j["disks"].as_array_mut() {
            for (d, (v, s)) in disks.iter_mut().zip(&self.sizes) {
                d["virtual_size"] = json!(v);
                d["stored_size"] = json!(s);
            }
        }
        j
    }
}

fn sum(it: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    it.fold(None, |acc, v| match (acc, v) {
        (a, None) => a,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a + v),
    })
}

/// `n` bytes for a person: "512 B", "4.0 MiB", "1.5 GiB"; "-" if unknown.
pub(crate) fn human(n: Option<u64>) -> String {
    let Some(n) = n else { return "-".into() };
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub(crate) fn cmd_info(ctx: &mut Ctx, a: &InfoArgs) -> Res<()> {
    let b = Backup::lookup(&a.uuid)?;
    if a.xml && !ctx.json {
        println!("{}", b.xml()?);
        return Ok(());
    }
    let d = Described::of(&b)?;
    if ctx.json {
        ctx.print_json(d.to_json());
    } else {
        print!("{}", summary(&d));
    }
    Ok(())
}

/// `info`'s summary: "Name: value" lines as `virsh dominfo` prints them,
/// then a table of the disks.
pub(crate) fn summary(d: &Described) -> String {
    let i = &d.info;
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let lines = [
        ("UUID", i.uuid.clone()),
        ("Domain", or_dash(&i.domain)),
        ("Domain UUID", or_dash(&i.domain_uuid)),
        ("Kind", i.kind().to_string()),
        ("Creation Time", info::local_time(i.creation_time)),
        ("Parent", or_dash(i.parent.as_deref().unwrap_or_default())),
        ("State", or_dash(&i.state)),
        ("Disks", i.disks.len().to_string()),
        ("Disk Size", human(d.virtual_size())),
        ("Stored Size", human(d.stored())),
        ("Description", or_dash(&i.description)),
    ];
    let mut out = String::new();
    for (k, v) in lines {
        out += &format!("{:<15} {v}\n", format!("{k}:"));
    }
    out += &format!(
        "\n {:<8} {:<12} {:<7} {:>11} {:>11}   Target\n",
        "Disk", "Mode", "Format", "Disk Size", "Stored"
    );
    out += &format!("{}\n", "-".repeat(64));
    for (disk, (v, s)) in i.disks.iter().zip(&d.sizes) {
        out += &format!(
            " {:<8} {:<12} {:<7} {:>11} {:>11}   {}\n",
            disk.name,
            or_dash(&disk.mode),
            or_dash(&disk.format),
            human(*v),
            human(*s),
            or_dash(&disk.target)
        );
    }
    out
}

/// A job state's word, as `list` and `--json` say it.
pub(crate) fn state_name(v: i32) -> &'static str {
    match v {
        1 => "running",
        2 => "completed",
        3 => "failed",
        4 => "cancelled",
        _ => "unknown",
    }
}

/// The job's parameters in `--json`'s vocabulary: `state` as a word,
/// `kind`, `bytes_total`, `bytes_processed`, `bytes_written`,
/// `time_elapsed_ms`, `disks` (name, bytes_total, bytes_processed each)
/// and the others with their dots as underscores.
pub(crate) fn status_json(uuid: &str, params: &[(String, Param)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("uuid".into(), uuid.into());
    let mut disks: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    for (n, v) in params {
        if let Some(rest) = n.strip_prefix("disk.")
            && let Some((i, field)) = rest.split_once('.')
            && let Ok(i) = i.parse::<usize>()
        {
            if disks.len() <= i {
                disks.resize_with(i + 1, Default::default);
            }
            disks[i].insert(field.replace('.', "_"), v.to_json());
            continue;
        }
        let (k, v) = match (n.as_str(), v) {
            ("state", Param::Int(s)) => ("state".into(), state_name(*s).into()),
            ("incremental", Param::Bool(b)) => (
                "kind".into(),
                if *b { "incremental" } else { "full" }.into(),
            ),
            ("disks", _) => continue,
            ("time.elapsed", v) => ("time_elapsed_ms".into(), v.to_json()),
            (n, v) => (n.replace('.', "_"), v.to_json()),
        };
        m.insert(k, v);
    }
    m.insert("disks".into(), json!(disks));
    m.into()
}

pub(crate) fn cmd_status(ctx: &mut Ctx, uuid: &str) -> Res<()> {
    let b = Backup::lookup(uuid)?;
    let params = b.parameters()?;
    if ctx.json {
        let full = b.uuid().unwrap_or_else(|_| uuid.to_string());
        ctx.print_json(status_json(&full, &params));
        return Ok(());
    }
    for (n, v) in &params {
        let shown = match (n.as_str(), v) {
            ("state", Param::Int(s)) => state_name(*s).to_string(),
            (_, Param::Bool(b)) => (if *b { "yes" } else { "no" }).to_string(),
            (_, Param::Str(s)) => s.clone(),
            (_, v) => v.as_u64().unwrap_or(0).to_string(),
        };
        println!("{:<24} {shown}", format!("{n}:"));
    }
    Ok(())
}

/// The error line of a failed command for `--json`: one JSON object,
/// `{"error": {"code": N, "message": "..."}}`, `code` the library's
/// virErrorNumber when known (else 0), and for a command stopped by a
/// signal `signal`, its number.
pub(crate) fn error_json(e: &ApiError, line: &str, status: i32) -> String {
    let mut inner = json!({
        "code": e.code.max(0),
        "message": line.strip_prefix("error: ").unwrap_or(line),
    });
    if status > 128 {
        inner["signal"] = (status - 128).into();
    }
    json!({ "error": inner }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(512)), "512 B");
        assert_eq!(human(Some(4 << 20)), "4.0 MiB");
        assert_eq!(human(Some(3 << 29)), "1.5 GiB");
    }

    #[test]
    fn status_in_lists_words() {
        let p = vec![
            ("state".to_string(), Param::Int(2)),
            ("incremental".to_string(), Param::Bool(true)),
            ("bytes.written".to_string(), Param::ULLong(7)),
            ("disks".to_string(), Param::UInt(1)),
            ("disk.0.name".to_string(), Param::Str("vda".into())),
            ("disk.0.bytes.total".to_string(), Param::ULLong(9)),
        ];
        let j = status_json("u", &p);
        assert_eq!(j["state"], "completed");
        assert_eq!(j["kind"], "incremental");
        assert_eq!(j["bytes_written"], 7);
        assert_eq!(j["disks"][0]["name"], "vda");
        assert_eq!(j["disks"][0]["bytes_total"], 9);
    }

    #[test]
    fn error_object() {
        let e = ApiError {
            code: 104,
            message: "no backup".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&error_json(&e, "error: no backup", 1)).unwrap();
        assert_eq!(v["error"]["code"], 104);
        assert_eq!(v["error"]["message"], "no backup");
    }
}
