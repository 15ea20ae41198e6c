//! The policies `virt-backup run` applies, read from a TOML file
//! (`/etc/virt-backup/config.toml` unless `--config` names another; the
//! format is in virt-backup(1), "CONFIGURATION FILE", and README, "Running
//! unattended").
//!
//! Every value is checked while the file is read, so that a mistake is
//! reported with its line and column (`config check`, and every `run`)
//! before anything is backed up: unknown keys, unknown words, a rate that
//! does not parse, a policy that names no domain.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Where `run` and `config check` look without `--config`.
pub(crate) const DEFAULT_PATH: &str = "/etc/virt-backup/config.toml";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Config {
    #[serde(default)]
    pub run: RunSettings,
    #[serde(default)]
    pub notify: Notify,
    #[serde(default, rename = "policy")]
    pub policies: Vec<Spanned<Policy>>,
}

/// `[run]`: how many domains at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RunSettings {
    #[serde(default = "one", deserialize_with = "positive")]
    pub parallel: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings { parallel: 1 }
    }
}

fn one() -> usize {
    1
}

/// `[notify]`: who hears of a run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Notify {
    #[serde(default)]
    pub when: NotifyWhen,
    /// Run through `/bin/sh -c` with the report on its standard input.
    pub command: Option<String>,
    /// Mail the report to these addresses through `sendmail`.
    #[serde(default)]
    pub mail_to: Vec<String>,
    /// The sendmail program (default `/usr/sbin/sendmail`).
    pub sendmail: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum NotifyWhen {
    #[default]
    Failure,
    Always,
    Never,
}

/// One `[[policy]]`: which domains, and what to do with them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Policy {
    /// Shown in the summary, the journal and the hooks' environment.
    pub name: Option<String>,
    /// libvirt connection URI (default: `-c`, else libvirt's default).
    pub connect: Option<String>,
    /// Domain names, or shell patterns (`*`, `?`, `[...]`) over them.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Every domain of the connection.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub level: Level,
    /// `auto`: a full backup when the chain would be deeper than this.
    pub max_chain: Option<usize>,
    /// `auto`: a full backup when the last full one is older than this.
    pub full_after_days: Option<u64>,
    /// A folder, or `pool:NAME`; default: the domain's default target,
    /// else the catalog.
    pub target: Option<String>,
    pub format: Option<Format>,
    /// How the qcow2 targets store their clusters (`<compression>`).
    pub compression: Option<Compression>,
    /// Encrypt the backups with this libvirt secret (UUID or usage id).
    pub encrypt_secret: Option<String>,
    /// Encrypt the backups with the key in this file, registered as a
    /// libvirt secret (see `create --encrypt-key-file`).
    pub encrypt_key_file: Option<PathBuf>,
    #[serde(default)]
    pub exclude_disks: Vec<String>,
    /// Bytes per second, with the units of `create --rate`.
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<u64>,
    #[serde(default)]
    pub quiesce: bool,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub hooks: Hooks,
}

/// `compression = "zstd" | "zlib" | "none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Compression {
    Zstd,
    Zlib,
    None,
}

impl Compression {
    /// Its name in `<compression type>`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Zlib => "zlib",
            Compression::None => "none",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Level {
    /// Full when nothing usable to build on (see `run::choose_level`).
    #[default]
    Auto,
    Full,
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// `[policy.retention]`: Proxmox Backup Server's prune options, any
/// subset; none at all keeps every backup.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Retention {
    #[serde(default)]
    pub keep_last: usize,
    #[serde(default)]
    pub keep_hourly: usize,
    #[serde(default)]
    pub keep_daily: usize,
    #[serde(default)]
    pub keep_weekly: usize,
    #[serde(default)]
    pub keep_monthly: usize,
    #[serde(default)]
    pub keep_yearly: usize,
}

impl Retention {
    pub(crate) fn policy(&self) -> crate::prune::Policy {
        crate::prune::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
        }
    }
}

/// `[policy.verify]`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Verify {
    /// Verify each backup `run` makes, right after it.
    #[serde(default)]
    pub new: bool,
    /// Re-verify completed backups not verified (successfully) for this
    /// many days (Proxmox Backup Server's "outdated after").
    pub outdated_after_days: Option<u64>,
}

/// `[policy.hooks]`: commands run through `/bin/sh -c`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Hooks {
    /// Before the backup; a non-zero exit skips the domain.
    pub pre: Option<String>,
    /// After the backup, whatever its result.
    pub post: Option<String>,
    /// Seconds a hook may run before it is killed (and counts as failed).
    #[serde(default = "hook_timeout", deserialize_with = "positive_u64")]
    pub timeout: u64,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            pre: None,
            post: None,
            timeout: hook_timeout(),
        }
    }
}

fn hook_timeout() -> u64 {
    600
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn positive_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rate {
        Bytes(u64),
        Text(String),
    }
    match Rate::deserialize(d)? {
        Rate::Bytes(0) => Err(serde::de::Error::custom("a rate must be more than 0")),
        Rate::Bytes(n) => Ok(Some(n)),
        Rate::Text(s) => crate::rate::parse_rate(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("rate '{s}': {e}"))),
    }
}

impl Policy {
    /// The name shown for policy number `i` (from 1).
    pub(crate) fn label(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("policy {i}"))
    }

    /// Whether this policy covers a domain of this name.
    pub(crate) fn covers(&self, domain: &str) -> bool {
        self.all || self.domains.iter().any(|p| glob_match(p, domain))
    }
}

/// A configuration error with where it is (`path:line:column: message`).
fn at(path: &Path, text: &str, offset: usize, msg: &str) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{col}: {msg}", path.display())
}

/// Read and check a configuration file.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration '{}': {e}", path.display()))?;
    parse(path, &text)
}

/// Check a configuration's text (`path` only names it in messages).
pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, String> {
    let config: Config = toml::from_str(text).map_err(|e| match e.span() {
        Some(s) => at(path, text, s.start, e.message()),
        None => format!("{}: {}", path.display(), e.message()),
    })?;
    if config.policies.is_empty() {
        return Err(format!(
            "{}: no [[policy]]: nothing would be backed up",
            path.display()
        ));
    }
    for p in &config.policies {
        check_policy(p.get_ref()).map_err(|m| at(path, text, p.span().start, &m))?;
    }
    if config.notify.command.is_none()
        && config.notify.mail_to.is_empty()
        && config.notify.sendmail.is_some()
    {
        return Err(format!(
            "{}: [notify] names a sendmail program but no mail-to address",
            path.display()
        ));
    }
    Ok(config)
}

/// What a policy's values cannot say alone.
fn check_policy(p: &Policy) -> Result<(), String> {
    let name = p
        .name
        .as_deref()
        .map(|n| format!(" '{n}'"))
        .unwrap_or_default();
    if p.all && !p.domains.is_empty() {
        return Err(format!(
            "policy{name}: give `all = true` or `domains`, not both"
        ));
    }
    if !p.all && p.domains.is_empty() {
        return Err(format!(
            "policy{name} covers no domain: give `domains = [\"NAME\", \"PATTERN*\"]` or `all = true`"
        ));
    }
    if let Some(pat) = p.domains.iter().find(|d| d.is_empty()) {
        return Err(format!(
            "policy{name}: an empty domain name or pattern '{pat}'"
        ));
    }
    if p.level != Level::Auto && (p.max_chain.is_some() || p.full_after_days.is_some()) {
        return Err(format!(
            "policy{name}: max-chain and full-after-days only apply to level = \"auto\""
        ));
    }
    if p.max_chain == Some(0) {
        return Err(format!(
            "policy{name}: max-chain = 0 would make every backup full: use level = \"full\""
        ));
    }
    if p.format == Some(Format::Raw) && p.level != Level::Full {
        return Err(format!(
            "policy{name}: format = \"raw\" holds only full backups: use level = \"full\" or qcow2"
        ));
    }
    if let Some(t) = &p.target
        && !t.starts_with("pool:")
        && !t.starts_with('/')
    {
        return Err(format!(
            "policy{name}: target '{t}' must be an absolute folder or pool:NAME"
        ));
    }
    if p.target.as_deref() == Some("pool:") {
        return Err(format!("policy{name}: target 'pool:' names no pool"));
    }
    check_encryption(p, &name)
}

/// `encrypt-secret` or `encrypt-key-file`: one of them, on qcow2 targets
/// without compression.
fn check_encryption(p: &Policy, name: &str) -> Result<(), String> {
    if p.encrypt_secret.is_none() && p.encrypt_key_file.is_none() {
        return Ok(());
    }
    if p.encrypt_secret.is_some() && p.encrypt_key_file.is_some() {
        return Err(format!(
            "policy{name}: give encrypt-secret or encrypt-key-file, not both"
        ));
    }
    if p.encrypt_secret.as_deref() == Some("") {
        return Err(format!("policy{name}: encrypt-secret names no secret"));
    }
    if p.encrypt_key_file
        .as_ref()
        .is_some_and(|f| !f.is_absolute())
    {
        return Err(format!(
            "policy{name}: encrypt-key-file must be an absolute path"
        ));
    }
    if p.compression.is_some() {
        return Err(format!(
            "policy{name}: an encrypted backup stores no compressed clusters: \
             drop compression or the encryption"
        ));
    }
    if p.format == Some(Format::Raw) {
        return Err(format!(
            "policy{name}: format = \"raw\" has no header to keep a key in: \
             encrypted backups are qcow2"
        ));
    }
    Ok(())
}

/// Shell-style pattern match: `*` any run, `?` one character, `[abc]`,
/// `[a-z]` and `[!a]` one of a set; anything else matches itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => match (n.first(), class_end(p)) {
            (Some(c), Some(end)) => in_class(&p[1..end], *c) && glob_at(&p[end + 1..], &n[1..]),
            (Some(c), None) => *c == '[' && glob_at(&p[1..], &n[1..]),
            (None, _) => false,
        },
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// The index of the `]` closing a class that starts at `p[0]`.
fn class_end(p: &[char]) -> Option<usize> {
    let start = if p.get(1) == Some(&'!') { 2 } else { 1 };
    // A `]` right after `[` or `[!` is a member, as in the shell.
    (start + 1..p.len()).find(|&i| p[i] == ']')
}

fn in_class(class: &[char], c: char) -> bool {
    let (negate, set) = match class.first() {
        Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut i = 0;
    let mut hit = false;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            hit |= set[i] <= c && c <= set[i + 2];
            i += 3;
        } else {
            hit |= set[i] == c;
            i += 1;
        }
    }
    hit != negate
}

/// Whether a pattern has no wildcard: it names one domain, which must exist.
pub(crate) fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

/// `virt-backup config check`: the file's mistakes with their lines, or
/// its policies as `run` will read them.
pub(crate) fn cmd_check(ctx: &crate::Ctx, path: &Path) -> crate::Res<()> {
    let c = load(path).map_err(crate::err)?;
    ctx.say(&format!(
        "{}: OK, {} {}, up to {} domain{} at once",
        path.display(),
        c.policies.len(),
        if c.policies.len() == 1 {
            "policy"
        } else {
            "policies"
        },
        c.run.parallel,
        if c.run.parallel == 1 { "" } else { "s" }
    ));
    for (i, p) in c.policies.iter().enumerate() {
        ctx.say(&describe(p.get_ref(), i + 1));
    }
    ctx.print_json(serde_json::json!({
        "ok": true, "file": path.to_string_lossy(), "policies": c.policies.len(),
    }));
    Ok(())
}

/// One policy in a few words.
fn describe(p: &Policy, i: usize) -> String {
    let doms = if p.all {
        "every domain".to_string()
    } else {
        p.domains.join(", ")
    };
    let mut s = format!("  {}: {doms}", p.label(i));
    if let Some(c) = &p.connect {
        s += &format!(" on {c}");
    }
    s += &format!("; level {}", format!("{:?}", p.level).to_lowercase());
    if let Some(n) = p.max_chain {
        s += &format!(", max-chain {n}");
    }
    if let Some(d) = p.full_after_days {
        s += &format!(", full-after-days {d}");
    }
    let r = &p.retention;
    let keeps: Vec<String> = [
        ("last", r.keep_last),
        ("hourly", r.keep_hourly),
        ("daily", r.keep_daily),
        ("weekly", r.keep_weekly),
        ("monthly", r.keep_monthly),
        ("yearly", r.keep_yearly),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(w, n)| format!("{w} {n}"))
    .collect();
    s += &if keeps.is_empty() {
        "; keeps every backup".to_string()
    } else {
        format!("; keep {}", keeps.join(", "))
    };
    if let Some(sec) = &p.encrypt_secret {
        s += &format!("; encrypted with secret {sec}");
    }
    if let Some(f) = &p.encrypt_key_file {
        s += &format!("; encrypted with the key file {}", f.display());
    }
    if p.verify.new {
        s += "; verifies new backups";
    }
    if let Some(d) = p.verify.outdated_after_days {
        s += &format!("; re-verifies after {d} days");
    }
    for (w, h) in [("pre-hook", &p.hooks.pre), ("post-hook", &p.hooks.post)] {
        if h.is_some() {
            s += &format!("; {w}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        parse(Path::new("c.toml"), text)
    }

    #[test]
    fn a_complete_file_reads() {
        let c = check(
            r#"
[run]
parallel = 2
[notify]
when = "always"
command = "cat > /tmp/report"
mail-to = ["root"]
[[policy]]
name = "web"
domains = ["web-*", "db1"]
level = "auto"
max-chain = 6
full-after-days = 7
target = "/srv/backup"
encrypt-key-file = "/etc/virt-backup/web.key"
exclude-disks = ["vdb"]
rate = "100M"
retention = { keep-last = 3, keep-daily = 7, keep-yearly = 1 }
verify = { new = true, outdated-after-days = 30 }
hooks = { pre = "true", post = "true", timeout = 60 }
[[policy]]
all = true
connect = "test:///default"
level = "full"
format = "raw"
"#,
        )
        .unwrap();
        assert_eq!(c.run.parallel, 2);
        assert_eq!(c.notify.when, NotifyWhen::Always);
        let p = c.policies[0].get_ref();
        assert_eq!(p.rate, Some(100 << 20));
        assert_eq!(p.retention.keep_yearly, 1);
        assert!(p.covers("web-3") && p.covers("db1") && !p.covers("db12"));
        assert!(c.policies[1].get_ref().covers("anything"));
        assert_eq!(c.policies[1].get_ref().label(2), "policy 2");
    }

    #[test]
    fn mistakes_name_their_line() {
        for (text, line, what) in [
            (
                "[[policy]]\nall = true\nlevle = \"full\"\n",
                3,
                "unknown field `levle`",
            ),
            (
                "[[policy]]\nall = true\nlevel = \"daily\"\n",
                3,
                "unknown variant `daily`",
            ),
            ("[[policy]]\nall = true\nrate = \"fast\"\n", 3, "fast"),
            (
                "[run]\nparallel = 0\n[[policy]]\nall = true\n",
                2,
                "at least 1",
            ),
            ("\n[[policy]]\nname = \"x\"\n", 2, "covers no domain"),
            (
                "[[policy]]\nall = true\n\n[[policy]]\nall = true\ndomains = [\"a\"]\n",
                4,
                "not both",
            ),
            (
                "[[policy]]\nall = true\nlevel = \"full\"\nmax-chain = 3\n",
                1,
                "only apply",
            ),
            (
                "[[policy]]\nall = true\ntarget = \"rel/dir\"\n",
                1,
                "absolute",
            ),
            ("[[policy]]\nall = true\nformat = \"raw\"\n", 1, "only full"),
            (
                "[[policy]]\nall = true\nencrypt-secret = \"k\"\nencrypt-key-file = \"/k\"\n",
                1,
                "not both",
            ),
            (
                "[[policy]]\nall = true\nencrypt-key-file = \"k\"\n",
                1,
                "absolute",
            ),
            (
                "[[policy]]\nall = true\nencrypt-secret = \"k\"\ncompression = \"zstd\"\n",
                1,
                "compressed",
            ),
            (
                "[[policy]]\nall = true\nlevel = \"full\"\nformat = \"raw\"\nencrypt-key-file = \"/k\"\n",
                1,
                "no header",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(&format!("c.toml:{line}:")), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
        assert!(check("").unwrap_err().contains("no [[policy]]"));
    }

    #[test]
    fn patterns_match_as_the_shell_does() {
        for (p, n, want) in [
            ("web-*", "web-1", true),
            ("web-*", "web", false),
            ("*", "", true),
            ("db?", "db1", true),
            ("db?", "db12", false),
            ("vm[0-9]", "vm7", true),
            ("vm[!0-9]", "vm7", false),
            ("vm[!0-9]", "vmx", true),
            ("a[]]b", "a]b", true),
            ("a[b", "a[b", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} {n}");
        }
        assert!(is_literal("db1") && !is_literal("db*"));
    }
}
