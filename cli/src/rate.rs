//! `create --rate`: a rate in bytes per second, as people write it.

/// The units `--rate` takes, their multipliers, longest first so that a
/// suffix is matched whole ("KiB" before "B").
const UNITS: &[(&str, u64)] = &[
    ("KIB", 1 << 10),
    ("MIB", 1 << 20),
    ("GIB", 1 << 30),
    ("TIB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("B", 1),
];

/// What `--help` says of the units.
pub(crate) const RATE_HELP: &str = "Read at most RATE bytes per second from the disks, all \
    together (the backup's <bandwidth>): a whole number with an optional unit, K/M/G/T or \
    KiB/MiB/GiB/TiB for powers of 1024, KB/MB/GB/TB for powers of 1000, B for bytes, with or \
    without /s (case does not matter): 100M is 104857600 bytes/s, 1G, 52428800. \
    Holes in the disks cost nothing. Default: no limit";

/// Read a rate: `NUMBER[UNIT][/s]`, a positive whole number of bytes per
/// second once multiplied; anything else is refused, saying why (clap
/// names the value and the option).
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = |why: &str| why.to_string();
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(bad(
            "a rate is a whole number of bytes per second, with an optional unit (e.g. 100M)",
        ));
    }
    let unit = unit.trim().to_ascii_uppercase();
    let mult = match unit.as_str() {
        "" => 1,
        u => match UNITS.iter().find(|(name, _)| *name == u) {
            Some((_, m)) => *m,
            None => {
                return Err(bad(
                    "unknown unit (K, M, G, T, KiB, MiB, GiB, TiB, KB, MB, GB, TB or B)",
                ));
            }
        },
    };
    let n: u64 = number.parse().map_err(|_| bad("too large"))?;
    match n.checked_mul(mult) {
        Some(0) => Err(bad(
            "a rate must be more than 0 (leave --rate out for no limit)",
        )),
        Some(v) => Ok(v),
        None => Err(bad("too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_and_without_units() {
        for (s, want) in [
            ("1", 1),
            ("52428800", 52428800),
            ("100M", 100 << 20),
            ("100m", 100 << 20),
            ("100MiB", 100 << 20),
            ("100MiB/s", 100 << 20),
            ("100M/s", 100 << 20),
            ("1G", 1 << 30),
            ("1g/s", 1 << 30),
            ("2T", 2 << 40),
            ("64K", 64 << 10),
            ("100MB", 100_000_000),
            ("1GB", 1_000_000_000),
            ("512B", 512),
            ("512 KiB", 512 << 10),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_rate(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_rates_are_refused_saying_why() {
        for (s, why) in [
            ("", "whole number"),
            ("0", "more than 0"),
            ("0M", "more than 0"),
            ("-1", "whole number"),
            ("+5", "whole number"),
            ("1.5G", "unknown unit"),
            ("M", "whole number"),
            ("10X", "unknown unit"),
            ("10 M B", "unknown unit"),
            ("fast", "whole number"),
            ("18446744073709551616", "too large"),
            ("17179869184G", "too large"),
        ] {
            let e = parse_rate(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
