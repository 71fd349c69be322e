//! Boot command line parsing: `scenario=NAME cpus=N mem=MiB config=NAME`, the loader's
//! `rd_start=`/`rd_size=`, other words ignored.
//!
//! QEMU passes `-append` text as argv[1] (after `rd_start=`/`rd_size=` when an initrd is
//! given); YAMON and U-Boot pass their command line the same way. Words that are not ours
//! (console=, rd_start=, ...) are skipped so a real loader's line does not break the boot.

use core::fmt;

/// Scenario run when the command line names none.
pub const DEFAULT_SCENARIO: &str = "boot";

/// Options the firmware takes from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOptions<'a> {
    /// Scenario to run.
    pub scenario: &'a str,
    /// Number of CPUs the host started (`cpus=`), checked by the boot scenario.
    pub expect_cpus: Option<usize>,
    /// RAM size in MiB the host configured (`mem=`), checked by the boot scenario.
    pub expect_mem_mib: Option<u64>,
    /// VM layout to use (`config=NAME`, an embedded configs/NAME.dtb).
    pub config: Option<&'a str>,
    /// Guest image for every VM, overriding the layout (`image=NAME`; `initrd` for the
    /// loader's initrd).
    pub image: Option<&'a str>,
    /// Initrd start address (`rd_start=`, a KSEG0 address from the boot loader).
    pub rd_start: Option<u64>,
    /// Initrd size in bytes (`rd_size=`).
    pub rd_size: Option<u64>,
}

/// Command line errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A numeric option has a value that is not a number.
    BadNumber {
        /// The option name.
        key: &'a str,
        /// The text given.
        value: &'a str,
    },
    /// `scenario=` with nothing after it.
    EmptyScenario,
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadNumber { key, value } => write!(f, "{key}={value}: not a number"),
            Self::EmptyScenario => write!(f, "scenario= needs a name"),
        }
    }
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Parses the command line, given as the loader's argument strings (each may hold several
/// whitespace-separated words).
pub fn parse<'a>(
    args: impl IntoIterator<Item = &'a str>,
) -> Result<BootOptions<'a>, CmdlineError<'a>> {
    let mut options = BootOptions {
        scenario: DEFAULT_SCENARIO,
        expect_cpus: None,
        expect_mem_mib: None,
        config: None,
        image: None,
        rd_start: None,
        rd_size: None,
    };
    for word in args.into_iter().flat_map(str::split_whitespace) {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "scenario" if value.is_empty() => return Err(CmdlineError::EmptyScenario),
            "scenario" => options.scenario = value,
            "cpus" => {
                let n = parse_number(value).ok_or(CmdlineError::BadNumber { key, value })?;
                options.expect_cpus = Some(n as usize);
            }
            "mem" => {
                let n = parse_number(value).ok_or(CmdlineError::BadNumber { key, value })?;
                options.expect_mem_mib = Some(n);
            }
            "config" if !value.is_empty() => options.config = Some(value),
            "image" if !value.is_empty() => options.image = Some(value),
            "rd_start" => {
                let n = parse_number(value).ok_or(CmdlineError::BadNumber { key, value })?;
                options.rd_start = Some(n);
            }
            "rd_size" => {
                let n = parse_number(value).ok_or(CmdlineError::BadNumber { key, value })?;
                options.rd_size = Some(n);
            }
            _ => {}
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults() {
        let options = parse([""]).unwrap();
        assert_eq!(options.scenario, DEFAULT_SCENARIO);
        assert_eq!(options.expect_cpus, None);
        assert_eq!(options.expect_mem_mib, None);
        assert_eq!(parse([]).unwrap(), options);
    }

    #[test]
    fn options_among_foreign_words() {
        let line = "rd_start=0xffffffff80f00000 rd_size=123 console=ttyS0 scenario=panic-selftest \
                    cpus=4 quiet mem=0x400";
        let options = parse([line]).unwrap();
        assert_eq!(options.scenario, "panic-selftest");
        assert_eq!(options.expect_cpus, Some(4));
        assert_eq!(options.expect_mem_mib, Some(1024));
        assert_eq!(options.rd_start, Some(0xffff_ffff_80f0_0000));
        assert_eq!(options.rd_size, Some(123));
        assert_eq!(options.config, None);
        assert_eq!(options.image, None);
    }

    #[test]
    fn guest_options() {
        let options = parse(["scenario=guests config=dedup image=initrd"]).unwrap();
        assert_eq!(options.config, Some("dedup"));
        assert_eq!(options.image, Some("initrd"));
        // Empty values are ignored rather than naming nothing.
        let options = parse(["config= image="]).unwrap();
        assert_eq!((options.config, options.image), (None, None));
        assert!(parse(["rd_size=12k"]).is_err());
    }

    #[test]
    fn one_word_per_argument_like_yamon() {
        let options = parse(["scenario=boot", "mem=256", "cpus=1"]).unwrap();
        assert_eq!(options.scenario, "boot");
        assert_eq!(options.expect_cpus, Some(1));
        assert_eq!(options.expect_mem_mib, Some(256));
    }

    #[test]
    fn later_words_win() {
        assert_eq!(parse(["scenario=a scenario=b"]).unwrap().scenario, "b");
    }

    #[test]
    fn bad_values_are_errors_naming_the_option() {
        let error = parse(["cpus=four"]).unwrap_err();
        assert_eq!(
            error,
            CmdlineError::BadNumber {
                key: "cpus",
                value: "four"
            }
        );
        assert_eq!(error.to_string(), "cpus=four: not a number");
        assert_eq!(
            parse(["mem=0x"]).unwrap_err(),
            CmdlineError::BadNumber {
                key: "mem",
                value: "0x"
            }
        );
        assert_eq!(
            parse(["scenario="]).unwrap_err(),
            CmdlineError::EmptyScenario
        );
    }

    #[test]
    fn numbers_in_decimal_and_hex() {
        assert_eq!(parse_number("536870912"), Some(512 << 20));
        assert_eq!(parse_number("0x20000000"), Some(512 << 20));
        assert_eq!(parse_number("0X10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
    }
}
