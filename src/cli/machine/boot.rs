//! How the guest starts: `-boot` (SeaBIOS's boot order and menu) and the choice between
//! firmware (`-bios`) and direct kernel boot (`-kernel`, `-initrd`, `-append`), with the
//! files checked.

use std::path::{Path, PathBuf};

use super::MachineError;
use crate::cli::host::{check_readable, Host};
use crate::cli::options::Opts;
use crate::config::{BootConfig, BootOrder};

/// Largest firmware image troupe maps (the top 16 MiB below 4 GiB).
pub const MAX_BIOS_SIZE: u64 = 16 << 20;

/// `-boot [order=]LETTERS[,once=LETTERS][,menu=on|off][,splash-time=MS][,strict=on|off]
/// [,reboot-timeout=MS]`, on top of QEMU's defaults (order "cad").
pub fn parse_boot(mut opts: Opts) -> Result<BootOrder, MachineError> {
    let order = opts.str("order").unwrap_or_else(|| "cad".to_string());
    check_boot_letters(&order)?;
    let once = opts.str("once");
    if let Some(once) = &once {
        check_boot_letters(once)?;
    }
    let menu = opts.flag("menu")?.unwrap_or(false);
    let splash_time_ms = opts
        .uint("splash-time", 0, 0xffff)?
        .map(|v| u32::try_from(v).unwrap_or(0xffff));
    let strict = opts.flag("strict")?.unwrap_or(false);
    let reboot_timeout_ms = match opts.str("reboot-timeout") {
        None => -1,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (-1..=0xffff).contains(&n) => n,
            _ => return Err(MachineError::RebootTimeout(v)),
        },
    };
    opts.finish()?;
    Ok(BootOrder {
        order,
        once,
        menu,
        splash_time_ms,
        strict,
        reboot_timeout_ms,
    })
}

/// Most boot devices a PC's CMOS holds (bytes 0x3d and 0x38), as QEMU's `set_boot_dev`.
const MAX_BOOT_DEVICES: usize = 3;

/// QEMU's boot letters for `pc`: a, b (floppy), c (disk), d (CD-ROM), n (network), each once,
/// at most three.
fn check_boot_letters(letters: &str) -> Result<(), MachineError> {
    let mut seen = Vec::new();
    for c in letters.chars() {
        if !matches!(c, 'a' | 'b' | 'c' | 'd' | 'n') {
            return Err(MachineError::BootDevice(c));
        }
        if seen.contains(&c) {
            return Err(MachineError::BootTwice(c));
        }
        seen.push(c);
    }
    if seen.len() > MAX_BOOT_DEVICES {
        return Err(MachineError::BootTooMany(letters.to_string()));
    }
    Ok(())
}

/// The default boot settings.
pub fn default_boot() -> BootOrder {
    BootOrder {
        order: "cad".to_string(),
        once: None,
        menu: false,
        splash_time_ms: None,
        strict: false,
        reboot_timeout_ms: -1,
    }
}

/// The boot-related options as given.
#[derive(Debug, Clone, Default)]
pub struct BootFiles {
    /// `-bios`.
    pub bios: Option<PathBuf>,
    /// `-kernel`.
    pub kernel: Option<PathBuf>,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`.
    pub append: Option<String>,
}

/// Which boot option an error is about, so the caller can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOption {
    /// `-bios`.
    Bios,
    /// `-kernel`.
    Kernel,
    /// `-initrd`.
    Initrd,
    /// `-append`.
    Append,
}

/// Firmware or direct boot, with every named file checked.
pub fn resolve_boot(
    files: &BootFiles,
    host: &Host,
) -> Result<BootConfig, (BootOption, MachineError)> {
    let Some(kernel) = &files.kernel else {
        if files.initrd.is_some() {
            return Err((BootOption::Initrd, MachineError::NeedsKernel));
        }
        if files.append.is_some() {
            return Err((BootOption::Append, MachineError::NeedsKernel));
        }
        let bios = files
            .bios
            .clone()
            .unwrap_or_else(|| host.default_bios.clone());
        check_bios(&bios, files.bios.is_none()).map_err(|e| (BootOption::Bios, e))?;
        return Ok(BootConfig::Firmware { bios });
    };
    if files.bios.is_some() {
        return Err((BootOption::Bios, MachineError::BiosWithKernel));
    }
    check_readable(kernel).map_err(|e| (BootOption::Kernel, e.into()))?;
    if let Some(initrd) = &files.initrd {
        check_readable(initrd).map_err(|e| (BootOption::Initrd, e.into()))?;
    }
    Ok(BootConfig::Direct {
        kernel: kernel.clone(),
        initrd: files.initrd.clone(),
        cmdline: files.append.clone().unwrap_or_default(),
    })
}

fn check_bios(path: &Path, is_default: bool) -> Result<(), MachineError> {
    let size = check_readable(path).map_err(|e| {
        if is_default {
            MachineError::DefaultBiosMissing(e)
        } else {
            MachineError::File(e)
        }
    })?;
    if size == 0 || size % (64 << 10) != 0 {
        return Err(MachineError::BiosAlignment(size));
    }
    if size > MAX_BIOS_SIZE {
        return Err(MachineError::BiosTooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::host::testing::{host, TempFile};

    fn opts(s: &str, implied: &str) -> Opts {
        Opts::parse(s, Some(implied)).unwrap()
    }

    fn boot(s: &str) -> Result<BootOrder, String> {
        parse_boot(opts(s, "order")).map_err(|e| e.to_string())
    }

    #[test]
    fn boot_options_parse_with_defaults() {
        assert_eq!(boot("").unwrap(), default_boot());
        assert_eq!(boot("d").unwrap().order, "d");
        let b = boot("order=cdn,once=d,menu=on,splash-time=5000,strict=on,reboot-timeout=1000")
            .unwrap();
        assert_eq!(b.order, "cdn");
        assert_eq!(b.once.as_deref(), Some("d"));
        assert!(b.menu && b.strict);
        assert_eq!(b.splash_time_ms, Some(5000));
        assert_eq!(b.reboot_timeout_ms, 1000);
        assert_eq!(boot("reboot-timeout=-1").unwrap().reboot_timeout_ms, -1);
    }

    #[test]
    fn boot_errors_name_the_letter_or_value() {
        let letters = "(a, b: floppy; c: first hard disk; d: CD-ROM; n: network)";
        assert_eq!(
            boot("order=x"),
            Err(format!("invalid boot device 'x' {letters}"))
        );
        assert_eq!(
            boot("order=cz"),
            Err(format!("invalid boot device 'z' {letters}"))
        );
        assert_eq!(
            boot("once=e"),
            Err(format!("invalid boot device 'e' {letters}"))
        );
        assert_eq!(
            boot("order=cc"),
            Err("boot device 'c' was given twice".into())
        );
        assert_eq!(
            boot("order=cdna"),
            Err("too many boot devices for PC: 'cdna' names more than 3".into())
        );
        assert_eq!(
            boot("once=dcn,order=cdnb"),
            Err("too many boot devices for PC: 'cdnb' names more than 3".into())
        );
        assert_eq!(
            boot("menu=maybe"),
            Err("parameter 'menu' expects 'on' or 'off', not 'maybe'".into())
        );
        assert_eq!(
            boot("splash-time=abc"),
            Err("parameter 'splash-time' expects a number, not 'abc'".into())
        );
        assert_eq!(
            boot("splash-time=70000"),
            Err("parameter 'splash-time' must be between 0 and 65535, not 70000".into())
        );
        assert_eq!(
            boot("reboot-timeout=-2"),
            Err("reboot-timeout must be between -1 and 65535, not '-2'".into())
        );
        assert!(boot("c,foo=1")
            .unwrap_err()
            .starts_with("parameter 'foo' is not supported"));
    }

    #[test]
    fn boot_defaults_to_firmware_and_checks_it() {
        let bios = TempFile::new(256 << 10);
        let h = host(bios.path());
        let cfg = resolve_boot(&BootFiles::default(), &h).unwrap();
        assert_eq!(
            cfg,
            BootConfig::Firmware {
                bios: bios.0.clone()
            }
        );

        let missing = host(Path::new("/nonexistent/bios-256k.bin"));
        let (opt, e) = resolve_boot(&BootFiles::default(), &missing).unwrap_err();
        assert_eq!(opt, BootOption::Bios);
        assert_eq!(
            e.to_string(),
            "could not open: No such file or directory (install the Debian package 'seabios', or give -bios)"
        );
    }

    #[test]
    fn bios_size_is_checked() {
        let h = host(Path::new("/nonexistent"));
        let check = |len: u64| {
            let f = TempFile::new(len);
            let files = BootFiles {
                bios: Some(f.0.clone()),
                ..Default::default()
            };
            resolve_boot(&files, &h).map_err(|(_, e)| e.to_string())
        };
        assert!(check(64 << 10).is_ok());
        assert!(check(16 << 20).is_ok());
        assert_eq!(
            check(1000),
            Err("firmware size 1000 bytes is not a non-zero multiple of 64 KiB".into())
        );
        assert_eq!(
            check(0),
            Err("firmware size 0 bytes is not a non-zero multiple of 64 KiB".into())
        );
        assert_eq!(
            check(17 << 20),
            Err("firmware is 17825792 bytes, more than the 16 MiB troupe maps".into())
        );
        let files = BootFiles {
            bios: Some("/nope".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_boot(&files, &h).map_err(|(o, e)| (o, e.to_string())),
            Err((
                BootOption::Bios,
                "could not open: No such file or directory".into()
            ))
        );
    }

    #[test]
    fn direct_boot_checks_kernel_and_initrd() {
        let h = host(Path::new("/nonexistent"));
        let k = TempFile::new(100);
        let i = TempFile::new(100);
        let files = BootFiles {
            kernel: Some(k.0.clone()),
            initrd: Some(i.0.clone()),
            append: Some("console=ttyS0".into()),
            bios: None,
        };
        assert_eq!(
            resolve_boot(&files, &h).unwrap(),
            BootConfig::Direct {
                kernel: k.0.clone(),
                initrd: Some(i.0.clone()),
                cmdline: "console=ttyS0".into()
            }
        );
        let err = |files: BootFiles| resolve_boot(&files, &h).map_err(|(o, e)| (o, e.to_string()));
        assert_eq!(
            err(BootFiles {
                kernel: Some("/nope".into()),
                ..Default::default()
            }),
            Err((
                BootOption::Kernel,
                "could not open: No such file or directory".into()
            ))
        );
        assert_eq!(
            err(BootFiles {
                kernel: Some(k.0.clone()),
                initrd: Some("/nope".into()),
                ..Default::default()
            }),
            Err((
                BootOption::Initrd,
                "could not open: No such file or directory".into()
            ))
        );
        assert_eq!(
            err(BootFiles {
                initrd: Some(i.0.clone()),
                ..Default::default()
            }),
            Err((BootOption::Initrd, "only allowed with -kernel".into()))
        );
        assert_eq!(
            err(BootFiles {
                append: Some("x".into()),
                ..Default::default()
            }),
            Err((BootOption::Append, "only allowed with -kernel".into()))
        );
        assert_eq!(
            err(BootFiles {
                kernel: Some(k.0.clone()),
                bios: Some(k.0.clone()),
                ..Default::default()
            }),
            Err((
                BootOption::Bios,
                "troupe boots -kernel directly, without firmware; drop -bios or -kernel".into()
            ))
        );
        assert_eq!(
            err(BootFiles {
                kernel: Some("/".into()),
                ..Default::default()
            }),
            Err((BootOption::Kernel, "is a directory, not a file".into()))
        );
    }
}
