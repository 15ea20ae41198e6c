//! Shell completion: `virt-backup completions bash|zsh|fish` prints the
//! script, `virt-backup complete-words domains|backups` the words it
//! offers where a domain or a backup UUID goes.
//!
//! The bash script is our own, made from clap's model of the command
//! (`Cli::command()`): per subcommand, its options, which of them take a
//! value and what value (a word list, a file, a backup UUID), and what its
//! positional arguments are. clap_complete's bash script names its states
//! after the command with the '-' of "virt-backup" turned into "__" in one
//! place and not in the other, so that it completes only subcommand names.

use std::fmt::Write as _;

use clap::builder::ValueHint;
use clap::{Arg, Command};

use crate::Ctx;
use crate::api::Backup;

/// What `complete-words` lists.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Words {
    /// The names of the connection's domains (-c URI), running or not
    Domains,
    /// The UUIDs of every backup in the catalog
    Backups,
}

/// Print the words, one a line; nothing at all on an error (a completion
/// must stay quiet).
pub(crate) fn words(ctx: &mut Ctx, what: Words) {
    let list = match what {
        Words::Domains => domain_names(ctx),
        Words::Backups => Backup::list_all(0)
            .and_then(|l| l.iter().map(Backup::uuid).collect::<Result<Vec<_>, _>>())
            .ok(),
    };
    for w in list.unwrap_or_default() {
        println!("{w}");
    }
}

fn domain_names(ctx: &mut Ctx) -> Option<Vec<String>> {
    let doms = ctx.conn().ok()?.list_all_domains(0).ok()?;
    Some(doms.iter().filter_map(|d| d.name().ok()).collect())
}

/// Print the completion script for `shell`.
pub(crate) fn print(shell: clap_complete::Shell, cmd: Command) {
    let name = "virt-backup";
    if shell == clap_complete::Shell::Bash {
        print!("{}", bash(cmd));
        return;
    }
    // clap_complete's scripts offer hidden subcommands too: left out.
    let mut shown = without_hidden(&cmd);
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut shown, name, &mut script);
    let script = String::from_utf8_lossy(&script);
    match shell {
        clap_complete::Shell::Fish => print!("{script}{}", fish_dynamic(cmd)),
        clap_complete::Shell::Zsh => print!("{}", zsh_dynamic(&script)),
        _ => print!("{script}"),
    }
}

/// clap_complete's zsh script with domain names and backup UUIDs where
/// they go: its `_default` action of the arguments named domain, uuid and
/// what (UUID|DOMAIN) and of the options whose value is a UUID replaced
/// by functions that ask `complete-words`.
fn zsh_dynamic(script: &str) -> String {
    let mut out = String::new();
    for line in script.lines() {
        let t = line.trim_start();
        let action = if t.starts_with("':domain") {
            Some("_virt-backup_domains")
        } else if t.starts_with("':uuid") {
            Some("_virt-backup_backups")
        } else if t.starts_with("':what") {
            Some("_virt-backup_domains_or_backups")
        } else if t.contains(":UUID:_default'") {
            Some("_virt-backup_backups")
        } else {
            None
        };
        match action {
            Some(f) if line.contains(":_default'") => {
                out += &line.replacen(":_default'", &format!(":{f}'"), 1);
            }
            _ => out += line,
        }
        out.push('\n');
        if line.starts_with("#compdef") {
            out += ZSH_WORDS;
        }
    }
    out
}

const ZSH_WORDS: &str = r#"
# Domain names (of the connection -c names on the line) and backup UUIDs,
# from `virt-backup complete-words`.
_virt-backup_complete_words() {
    local -a line_words opts found
    local i
    line_words=(${(z)BUFFER})
    for ((i = 2; i <= ${#line_words}; i++)); do
        case "${line_words[i]}" in
            -c|--connect) opts=(-c "${(Q)line_words[i+1]}") ;;
            --connect=*) opts=(-c "${(Q)line_words[i]#--connect=}") ;;
        esac
    done
    found=(${(f)"$(${(Q)line_words[1]:-virt-backup} $opts -q complete-words $1 2>/dev/null)"})
    compadd -a found
}
_virt-backup_domains() { _virt-backup_complete_words domains }
_virt-backup_backups() { _virt-backup_complete_words backups }
_virt-backup_domains_or_backups() {
    _virt-backup_complete_words domains
    _virt-backup_complete_words backups
}
"#;

/// `cmd` without its hidden subcommands.
fn without_hidden(cmd: &Command) -> Command {
    let mut out = Command::new("virt-backup")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    out
}

/// What goes where an argument's value goes.
#[derive(Debug, PartialEq)]
enum Value {
    Nothing,
    Domains,
    Backups,
    DomainsOrBackups,
    Files,
    Dirs,
    Choices(Vec<String>),
}

fn value_of(arg: &Arg) -> Value {
    let choices: Vec<String> = (arg.get_possible_values().iter())
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !choices.is_empty() {
        return Value::Choices(choices);
    }
    let names = arg.get_value_names().unwrap_or_default();
    let named = |n: &str| names.iter().any(|v| v.as_str() == n);
    match (arg.get_id().as_str(), arg.get_value_hint()) {
        ("domain", _) => Value::Domains,
        ("uuid", _) => Value::Backups,
        ("what", _) => Value::DomainsOrBackups,
        (_, ValueHint::DirPath) => Value::Dirs,
        (_, ValueHint::AnyPath | ValueHint::FilePath | ValueHint::ExecutablePath) => Value::Files,
        _ if named("UUID") => Value::Backups,
        _ => Value::Nothing,
    }
}

/// The bash words that fill COMPREPLY for `v`.
fn reply(v: &Value) -> String {
    let words = |w: &str| format!("COMPREPLY=($(compgen -W \"{w}\" -- \"$cur\"))");
    match v {
        Value::Nothing => "COMPREPLY=()".into(),
        Value::Domains => words("$(_virt_backup_words domains)"),
        Value::Backups => words("$(_virt_backup_words backups)"),
        Value::DomainsOrBackups => {
            words("$(_virt_backup_words domains) $(_virt_backup_words backups)")
        }
        Value::Files => "COMPREPLY=($(compgen -f -- \"$cur\"))".into(),
        Value::Dirs => "COMPREPLY=($(compgen -d -- \"$cur\"))".into(),
        Value::Choices(c) => words(&c.join(" ")),
    }
}

/// An option that consumes the next word as its value.
fn takes_value(arg: &Arg) -> bool {
    !arg.is_positional()
        && arg.get_action().takes_values()
        && arg.get_num_args().is_none_or(|n| n.min_values() > 0)
}

fn flags_of(arg: &Arg) -> Vec<String> {
    let mut out: Vec<String> = (arg.get_short_and_visible_aliases().unwrap_or_default())
        .into_iter()
        .map(|c| format!("-{c}"))
        .collect();
    out.extend(
        (arg.get_long_and_visible_aliases().unwrap_or_default())
            .into_iter()
            .map(|l| format!("--{l}")),
    );
    out
}

/// One subcommand's part of the script: `path` is the words of the
/// subcommands that lead to it ("" for the command itself).
struct Part {
    path: String,
    subcommands: Vec<String>,
    options: Vec<String>,
    /// The options that take a value and what their value is.
    valued: Vec<(Vec<String>, Value)>,
    positionals: Vec<Value>,
}

fn parts(cmd: &Command, path: &str, out: &mut Vec<Part>) {
    let visible = || cmd.get_subcommands().filter(|s| !s.is_hide_set());
    let mut part = Part {
        path: path.to_string(),
        subcommands: visible().map(|s| s.get_name().to_string()).collect(),
        options: Vec::new(),
        valued: Vec::new(),
        positionals: Vec::new(),
    };
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if arg.is_positional() {
            part.positionals.push(value_of(arg));
            continue;
        }
        let flags = flags_of(arg);
        part.options.extend(flags.iter().cloned());
        if takes_value(arg) {
            part.valued.push((flags, value_of(arg)));
        }
    }
    out.push(part);
    // `help`'s own subcommands only name the others again.
    if path.rsplit(' ').next() == Some("help") {
        return;
    }
    for s in visible() {
        let p = match path {
            "" => s.get_name().to_string(),
            _ => format!("{path} {}", s.get_name()),
        };
        parts(s, &p, out);
    }
}

/// The bash completion script of `cmd`.
fn bash(mut cmd: Command) -> String {
    cmd.build();
    let mut all = Vec::new();
    parts(&cmd, "", &mut all);
    let mut s = String::from(BASH_HEAD);
    let mut case = |func: &str, body: &dyn Fn(&Part) -> String| {
        let _ = writeln!(s, "{func}() {{\n    case \"$1\" in");
        for p in &all {
            let _ = writeln!(s, "        \"{}\") {} ;;", p.path, body(p));
        }
        s += "    esac\n}\n\n";
    };
    case("_virt_backup_subcommands", &|p| {
        format!("echo \"{}\"", p.subcommands.join(" "))
    });
    case("_virt_backup_options", &|p| {
        format!("echo \"{}\"", p.options.join(" "))
    });
    case("_virt_backup_valued", &|p| {
        let v: Vec<String> = p.valued.iter().flat_map(|v| v.0.clone()).collect();
        format!("echo \"{}\"", v.join(" "))
    });
    // $2: the option before the word completed.
    case("_virt_backup_value", &|p| {
        let mut b = String::from("case \"$2\" in");
        for (flags, v) in &p.valued {
            let _ = write!(b, " {}) {} ;;", flags.join("|"), reply(v));
        }
        b + " *) COMPREPLY=() ;; esac"
    });
    // $2: how many positional arguments come before the word completed.
    case("_virt_backup_positional", &|p| {
        let mut b = String::from("case \"$2\" in");
        for (i, v) in p.positionals.iter().enumerate() {
            let _ = write!(b, " {i}) {} ;;", reply(v));
        }
        b + " *) COMPREPLY=() ;; esac"
    });
    s + BASH_TAIL
}

const BASH_HEAD: &str = r#"# bash completion for virt-backup (written by `virt-backup completions bash`)

# The words `virt-backup complete-words $1` prints, for the connection the
# line names (-c URI, --connect URI or --connect=URI; bash splits a URI at
# its ':' into several words, joined again here).
_virt_backup_words() {
    local i uri="" n=${#COMP_WORDS[@]}
    for ((i = 1; i < n; i++)); do
        case "${COMP_WORDS[i]}" in
            -c|--connect)
                uri=""
                ((i++))
                [[ ${COMP_WORDS[i]} == "=" ]] && ((i++))
                while ((i < n && i != COMP_CWORD)); do
                    uri+="${COMP_WORDS[i]}"
                    [[ ${COMP_WORDS[i+1]} == ":" || ${COMP_WORDS[i]} == ":" ]] || break
                    ((i++))
                done ;;
            --connect=*) uri="${COMP_WORDS[i]#--connect=}" ;;
        esac
    done
    "${COMP_WORDS[0]}" ${uri:+-c "$uri"} -q complete-words "$1" 2>/dev/null
}

"#;

const BASH_TAIL: &str = r#"_virt_backup() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path="" npos=0 i w subs
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            # The rest of a word bash split at '=' or ':' (a URI).
            "="|":") ((i++)); continue ;;
            -*)
                if [[ " $(_virt_backup_valued "$path") " == *" $w "* ]]; then
                    ((i++))
                    [[ ${COMP_WORDS[i]} == "=" ]] && ((i++))
                fi
                continue ;;
        esac
        subs="$(_virt_backup_subcommands "$path")"
        if ((npos == 0)) && [[ " $subs " == *" $w "* ]]; then
            path="${path:+$path }$w"
        else
            ((npos++))
        fi
    done
    if [[ $prev == "=" ]] && ((COMP_CWORD > 1)); then
        prev="${COMP_WORDS[COMP_CWORD-2]}"
    fi
    if [[ $prev == -* && " $(_virt_backup_valued "$path") " == *" $prev "* ]]; then
        _virt_backup_value "$path" "$prev"
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_virt_backup_options "$path")" -- "$cur"))
        return 0
    fi
    subs="$(_virt_backup_subcommands "$path")"
    if [[ -n $subs ]] && ((npos == 0)); then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
        return 0
    fi
    _virt_backup_positional "$path" "$npos"
    return 0
}

complete -F _virt_backup virt-backup
"#;

/// Lines added to clap_complete's fish script: domain names and backup
/// UUIDs where they go, from `complete-words`.
fn fish_dynamic(mut cmd: Command) -> String {
    cmd.build();
    let mut all = Vec::new();
    parts(&cmd, "", &mut all);
    let mut s = String::from("\n# Domains and backup UUIDs (virt-backup complete-words)\n");
    for p in all
        .iter()
        .filter(|p| !p.path.is_empty() && !p.path.contains(' '))
    {
        let first = p.positionals.first();
        let words = match first {
            Some(Value::Domains) => "(virt-backup complete-words domains 2>/dev/null)",
            Some(Value::Backups) => "(virt-backup complete-words backups 2>/dev/null)",
            Some(Value::DomainsOrBackups) => {
                "(virt-backup complete-words domains 2>/dev/null; virt-backup complete-words backups 2>/dev/null)"
            }
            _ => continue,
        };
        let _ = writeln!(
            s,
            "complete -c virt-backup -n \"__fish_seen_subcommand_from {}\" -f -a \"{words}\"",
            p.path
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn bash_script_knows_options_and_arguments() {
        let s = bash(crate::Cli::command());
        assert!(s.contains("\"create\") echo \""), "{s}");
        assert!(s.contains("--rate"));
        assert!(s.contains("_virt_backup_words domains"));
        assert!(s.contains("_virt_backup_words backups"));
        assert!(!s.contains("restore-interrupted"));
        assert!(s.contains("complete -F _virt_backup virt-backup"));
    }

    #[test]
    fn zsh_and_fish_leave_hidden_subcommands_out() {
        let shown = without_hidden(&crate::Cli::command());
        let names: Vec<&str> = shown.get_subcommands().map(|s| s.get_name()).collect();
        assert!(names.contains(&"create") && names.contains(&"verify"));
        assert!(!names.contains(&"complete-words") && !names.contains(&"completions"));
    }
}
