//! What the user sees the guest through: `-vnc`, `-display`, `-vga`, `-k`.
//!
//! troupe has no GUI: the guest's screen is served over VNC or nowhere. With no display
//! option it does what a QEMU built without a GUI does: VNC on `localhost:0,to=99`
//! ([`default_vnc`]), announced on stderr. GUI display backends and VGA models troupe
//! lacks are refused by name.

use thiserror::Error;

use super::chardev::{parse_port, split_host_port};
use super::options::{Opts, OptsError};
use crate::config::{SocketAddrSpec, VgaKind, VncConfig, VncShare};

/// QEMU's keymaps (`/usr/share/qemu/keymaps`), the `-k` values it accepts.
pub const KEYMAPS: &[&str] = &[
    "ar", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no", "pl",
    "pt", "pt-br", "ru", "sl", "sv", "th", "tr",
];

/// Ways a display option can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DisplayError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// Not `[HOST]:N`.
    #[error("invalid VNC display '{0}' (expected [HOST]:N, like :1 or 127.0.0.1:0)")]
    VncAddress(String),
    /// A display number whose port doesn't exist.
    #[error("VNC display {0} is too large (5900 + N must be a TCP port)")]
    VncDisplay(u64),
    /// `to=` below the display.
    #[error("to={to} is below the display number {display}")]
    VncTo {
        /// `to=`.
        to: u64,
        /// The display.
        display: u16,
    },
    /// `websocket=` that isn't on/off/a port.
    #[error("websocket expects on, off or a port number, not '{0}'")]
    Websocket(String),
    /// `-display vnc` without `=`.
    #[error("VNC requires a display argument vnc=<display>")]
    VncNeedsDisplay,
    /// A second `-vnc` on the address the first one listens on.
    #[error("Failed to find an available port: Address already in use")]
    VncAddressInUse,
    /// A second `-vnc` elsewhere: troupe serves one VNC display.
    #[error("troupe serves one VNC display, and '{0}' is already given")]
    VncSecond(String),
    /// A GUI display.
    #[error("display '{0}' is not available in troupe: it has no GUI (use -vnc or -display none)")]
    Gui(String),
    /// A curses character set other than the VGA's.
    #[error("display 'curses': charset '{0}' is not supported by troupe (CP437)")]
    CursesCharset(String),
    /// An unknown display.
    #[error("unknown display type '{0}' (see -display help)")]
    UnknownDisplay(String),
    /// A VGA card troupe lacks.
    #[error("VGA type '{0}' is not supported by troupe (std, none)")]
    VgaRefused(String),
    /// An unknown VGA card.
    #[error("unknown vga type '{0}' (see -vga help)")]
    VgaUnknown(String),
    /// A second `-device VGA`.
    #[error("troupe has one VGA card")]
    VgaTwice,
    /// An unknown keymap.
    #[error("unknown keyboard layout '{0}' (see -k help)")]
    Keymap(String),
}

/// `-vnc none` or `-vnc [HOST]:N[,password=on][,share=...][,websocket=PORT|on][,to=N]
/// [,lossy=on]`. `Ok(None)` is `none`.
pub fn parse_vnc(arg: &str) -> Result<Option<VncConfig>, DisplayError> {
    let mut opts = Opts::parse(arg, Some("vnc"))?;
    let addr = opts.str("vnc").unwrap_or_default();
    if addr == "none" {
        opts.finish()?;
        return Ok(None);
    }
    let (host, display) =
        split_host_port(&addr).ok_or_else(|| DisplayError::VncAddress(addr.clone()))?;
    if host.starts_with("unix") {
        return Err(DisplayError::VncAddress(addr.clone()));
    }
    let display: u64 = display
        .parse()
        .map_err(|_| DisplayError::VncAddress(addr.clone()))?;
    let port = display
        .checked_add(5900)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or(DisplayError::VncDisplay(display))?;
    let display = display as u16;
    let password = opts.flag("password")?.unwrap_or(false);
    let share = opts
        .choice(
            "share",
            &[
                ("allow-exclusive", VncShare::AllowExclusive),
                ("force-shared", VncShare::ForceShared),
                ("ignore", VncShare::Ignore),
            ],
        )?
        .unwrap_or(VncShare::AllowExclusive);
    let websocket = match opts.str("websocket") {
        None => None,
        Some(w) => match w.as_str() {
            "on" | "yes" | "true" => Some(5700u16.saturating_add(display)),
            "off" | "no" | "false" => None,
            p => Some(parse_port(p).map_err(|_| DisplayError::Websocket(w.clone()))?),
        },
    };
    let to = match opts.uint("to", 0, 65535 - 5900)? {
        Some(t) if t < u64::from(display) => return Err(DisplayError::VncTo { to: t, display }),
        t => t.map(|t| t as u16),
    };
    let lossy = opts.flag("lossy")?.unwrap_or(false);
    let audiodev = opts.id("audiodev")?;
    let tls_creds = opts.id("tls-creds")?;
    opts.finish()?;
    Ok(Some(VncConfig {
        audiodev,
        tls_creds,
        tls: None,
        listen: SocketAddrSpec { host, port },
        display,
        password,
        share,
        websocket,
        to,
        lossy,
        announce: false,
    }))
}

/// QEMU's display when none is named and it has no GUI (vl.c: `localhost:0,to=99`).
pub fn default_vnc() -> VncConfig {
    VncConfig {
        audiodev: None,
        tls_creds: None,
        tls: None,
        listen: SocketAddrSpec {
            host: "127.0.0.1".into(),
            port: 5900,
        },
        display: 0,
        password: false,
        share: VncShare::AllowExclusive,
        websocket: None,
        to: Some(99),
        lossy: false,
        announce: true,
    }
}

/// What `-display` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayArg {
    /// `none`.
    None,
    /// `default`: no change.
    Default,
    /// `vnc=...`.
    Vnc(Option<VncConfig>),
    /// `curses[,charset=CP437]`.
    Curses,
    /// `help`.
    Help,
}

/// `-display none|default|vnc=VNCOPTS|help`.
pub fn parse_display(arg: &str) -> Result<DisplayArg, DisplayError> {
    let (kind, rest) = match arg.find([',', '=']) {
        Some(i) => (&arg[..i], &arg[i..]),
        None => (arg, ""),
    };
    match kind {
        "help" | "?" => Ok(DisplayArg::Help),
        "none" | "default" => {
            // `none` takes no sub-options in QEMU either (beyond gl=off).
            let mut opts = Opts::parse(rest.trim_start_matches(','), None)?;
            if opts.flag("gl")?.unwrap_or(false) {
                return Err(DisplayError::Gui("gl".into()));
            }
            opts.finish()?;
            Ok(if kind == "none" {
                DisplayArg::None
            } else {
                DisplayArg::Default
            })
        }
        "vnc" => match rest.strip_prefix('=') {
            Some(vnc) => Ok(DisplayArg::Vnc(parse_vnc(vnc)?)),
            None => Err(DisplayError::VncNeedsDisplay),
        },
        "curses" => {
            let mut opts = Opts::parse(rest.trim_start_matches(','), None)?;
            if let Some(c) = opts.str("charset") {
                if !matches!(c.to_ascii_uppercase().as_str(), "CP437" | "IBM437" | "437") {
                    return Err(DisplayError::CursesCharset(c.to_string()));
                }
            }
            opts.finish()?;
            Ok(DisplayArg::Curses)
        }
        "gtk" | "sdl" | "egl-headless" | "spice-app" | "cocoa" | "dbus" => {
            Err(DisplayError::Gui(kind.to_string()))
        }
        other => Err(DisplayError::UnknownDisplay(other.to_string())),
    }
}

/// `-display help`.
pub fn display_help() -> String {
    "Available display backend types:\nnone\ncurses\nvnc\n".to_string()
}

/// What `-vga` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgaArg {
    /// A card.
    Kind(VgaKind),
    /// `help`.
    Help,
}

/// `-vga std|none|help`.
pub fn parse_vga(arg: &str) -> Result<VgaArg, DisplayError> {
    match arg {
        "std" => Ok(VgaArg::Kind(VgaKind::Std)),
        "none" => Ok(VgaArg::Kind(VgaKind::None)),
        "help" | "?" => Ok(VgaArg::Help),
        "cirrus" | "vmware" | "qxl" | "virtio" | "xenfb" | "tcx" | "cg3" => {
            Err(DisplayError::VgaRefused(arg.to_string()))
        }
        other => Err(DisplayError::VgaUnknown(other.to_string())),
    }
}

/// `-vga help`.
pub fn vga_help() -> String {
    "none                 no graphic card\nstd                  standard VGA (default)\n"
        .to_string()
}

/// `-k LAYOUT`. `Ok(None)` is `help`.
pub fn parse_keymap(arg: &str) -> Result<Option<String>, DisplayError> {
    if arg == "help" || arg == "?" {
        return Ok(None);
    }
    if KEYMAPS.contains(&arg) {
        Ok(Some(arg.to_string()))
    } else {
        Err(DisplayError::Keymap(arg.to_string()))
    }
}

/// `-k help`.
pub fn keymap_help() -> String {
    let mut out = String::from("Available keymaps:\n");
    for k in KEYMAPS {
        out.push_str(k);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vnc(s: &str) -> Result<Option<VncConfig>, String> {
        parse_vnc(s).map_err(|e| e.to_string())
    }

    #[test]
    fn vnc_display_and_options() {
        let v = vnc(":1").unwrap().unwrap();
        assert_eq!(
            v.listen,
            SocketAddrSpec {
                host: "".into(),
                port: 5901
            }
        );
        assert_eq!(v.display, 1);
        assert!(!v.password && !v.lossy);
        assert_eq!(
            (v.share, v.websocket, v.to),
            (VncShare::AllowExclusive, None, None)
        );
        let v = vnc("127.0.0.1:0,password=on,share=force-shared,websocket=5700,to=5,lossy=on")
            .unwrap()
            .unwrap();
        assert_eq!(
            v.listen,
            SocketAddrSpec {
                host: "127.0.0.1".into(),
                port: 5900
            }
        );
        assert!(v.password && v.lossy);
        assert_eq!(
            (v.share, v.websocket, v.to),
            (VncShare::ForceShared, Some(5700), Some(5))
        );
        let v = vnc("[::1]:2,password,websocket=on,share=ignore")
            .unwrap()
            .unwrap();
        assert_eq!(
            v.listen,
            SocketAddrSpec {
                host: "::1".into(),
                port: 5902
            }
        );
        assert_eq!(
            (v.password, v.websocket, v.share),
            (true, Some(5702), VncShare::Ignore)
        );
        assert_eq!(vnc("none"), Ok(None));
    }

    #[test]
    fn vnc_errors() {
        assert_eq!(
            vnc("1"),
            Err("invalid VNC display '1' (expected [HOST]:N, like :1 or 127.0.0.1:0)".into())
        );
        assert_eq!(
            vnc(":x"),
            Err("invalid VNC display ':x' (expected [HOST]:N, like :1 or 127.0.0.1:0)".into())
        );
        assert_eq!(
            vnc("unix:/tmp/v"),
            Err(
                "invalid VNC display 'unix:/tmp/v' (expected [HOST]:N, like :1 or 127.0.0.1:0)"
                    .into()
            )
        );
        assert_eq!(
            vnc(":60000"),
            Err("VNC display 60000 is too large (5900 + N must be a TCP port)".into())
        );
        assert_eq!(vnc(":99999999999999999999"), Err("invalid VNC display ':99999999999999999999' (expected [HOST]:N, like :1 or 127.0.0.1:0)".into()));
        assert_eq!(
            vnc(":3,to=2"),
            Err("to=2 is below the display number 3".into())
        );
        assert_eq!(
            vnc(":3,websocket=x"),
            Err("websocket expects on, off or a port number, not 'x'".into())
        );
        assert_eq!(
            vnc(":1,share=foo"),
            Err("parameter 'share' does not accept value 'foo' (expected allow-exclusive, force-shared, ignore)".into())
        );
        assert!(vnc(":1,sasl=on").unwrap_err().starts_with("parameter 'sasl' is not supported (accepted: vnc, password, share, websocket, to, lossy, audiodev, tls-creds)"));
        assert_eq!(
            vnc(""),
            Err("invalid VNC display '' (expected [HOST]:N, like :1 or 127.0.0.1:0)".into())
        );
    }

    #[test]
    fn display_kinds() {
        assert_eq!(parse_display("none"), Ok(DisplayArg::None));
        assert_eq!(parse_display("default"), Ok(DisplayArg::Default));
        assert_eq!(parse_display("help"), Ok(DisplayArg::Help));
        let DisplayArg::Vnc(Some(v)) = parse_display("vnc=:1,password=on").unwrap() else {
            panic!()
        };
        assert_eq!((v.display, v.password), (1, true));
        assert_eq!(
            parse_display("vnc").unwrap_err().to_string(),
            "VNC requires a display argument vnc=<display>"
        );
        assert_eq!(
            parse_display("gtk").unwrap_err().to_string(),
            "display 'gtk' is not available in troupe: it has no GUI (use -vnc or -display none)"
        );
        assert_eq!(
            parse_display("sdl,gl=on").unwrap_err().to_string(),
            "display 'sdl' is not available in troupe: it has no GUI (use -vnc or -display none)"
        );
        assert_eq!(
            parse_display("foo").unwrap_err().to_string(),
            "unknown display type 'foo' (see -display help)"
        );
        assert!(parse_display("none,x=1").is_err());
    }

    #[test]
    fn vga_and_keymaps() {
        assert_eq!(parse_vga("std"), Ok(VgaArg::Kind(VgaKind::Std)));
        assert_eq!(parse_vga("none"), Ok(VgaArg::Kind(VgaKind::None)));
        assert_eq!(parse_vga("help"), Ok(VgaArg::Help));
        assert_eq!(
            parse_vga("cirrus").unwrap_err().to_string(),
            "VGA type 'cirrus' is not supported by troupe (std, none)"
        );
        assert_eq!(
            parse_vga("foo").unwrap_err().to_string(),
            "unknown vga type 'foo' (see -vga help)"
        );
        assert_eq!(parse_keymap("de"), Ok(Some("de".into())));
        assert_eq!(parse_keymap("help"), Ok(None));
        assert_eq!(
            parse_keymap("xx").unwrap_err().to_string(),
            "unknown keyboard layout 'xx' (see -k help)"
        );
        assert!(keymap_help().contains("\nen-us\n"));
    }
}
