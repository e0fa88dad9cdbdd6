//! The telnet layer QEMU puts on `telnet:` chardevs and monitors: the server announces
//! WILL ECHO, WILL SUPPRESS-GO-AHEAD, WILL BINARY, DO BINARY (the exact bytes QEMU sends),
//! strips the client's option negotiation from the input, and turns CR LF / CR NUL into
//! a single CR (one Enter, not two).

/// What QEMU sends on connect: WILL ECHO, WILL SGA, WILL BINARY, DO BINARY.
pub const SERVER_GREETING: &[u8] = &[
    0xff, 0xfb, 0x01, 0xff, 0xfb, 0x03, 0xff, 0xfb, 0x00, 0xff, 0xfd, 0x00,
];

const IAC: u8 = 0xff;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const WONT: u8 = 254;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Data,
    Iac,
    /// WILL/WONT/DO/DONT: the option byte follows.
    Option,
    Sub,
    SubIac,
    /// After a CR: swallow one LF or NUL.
    Cr,
}

/// Incremental telnet input decoder.
#[derive(Debug, Default)]
pub struct TelnetFilter {
    state: State,
}

impl TelnetFilter {
    /// Decode `input`; returns (data bytes, bytes to send back to the client).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::with_capacity(input.len());
        let reply = Vec::new();
        for &b in input {
            self.state = match (self.state, b) {
                (State::Data | State::Cr, IAC) => State::Iac,
                (State::Cr, b'\n' | 0) => State::Data,
                (State::Data | State::Cr, b'\r') => {
                    out.push(b'\r');
                    State::Cr
                }
                (State::Data | State::Cr, b) => {
                    out.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.push(IAC);
                    State::Data
                }
                (State::Iac, WILL..=WONT) => State::Option,
                (State::Iac, SB) => State::Sub,
                (State::Iac, _) => State::Data,
                (State::Option, _) => State::Data,
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, _) => State::Sub,
                (State::SubIac, SE) => State::Data,
                (State::SubIac, _) => State::Sub,
            };
        }
        (out, reply)
    }
}

/// Double every IAC in output data.
pub fn escape_iac(data: &[u8]) -> Vec<u8> {
    if !data.contains(&IAC) {
        return data.to_vec();
    }
    let mut v = Vec::with_capacity(data.len() + 8);
    for &b in data {
        v.push(b);
        if b == IAC {
            v.push(IAC);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_is_stripped_and_cr_lf_is_one_enter() {
        let mut f = TelnetFilter::default();
        let (d, _) = f.feed(&[0xff, 0xfd, 0x01, 0xff, 0xfd, 0x03, b'h', b'i', b'\r', b'\n']);
        assert_eq!(d, b"hi\r");
        let (d, _) = f.feed(b"a\r\0b\r");
        assert_eq!(d, b"a\rb\r");
        // An LF split into the next read still belongs to the CR.
        let (d, _) = f.feed(b"\nc");
        assert_eq!(d, b"c");
    }

    #[test]
    fn subnegotiation_and_escaped_iac() {
        let mut f = TelnetFilter::default();
        let (d, _) = f.feed(&[0xff, 250, 24, 0, b'x', 0xff, 240, b'o', 0xff, 0xff]);
        assert_eq!(d, [b'o', 0xff]);
        assert_eq!(escape_iac(&[1, 0xff, 2]), [1, 0xff, 0xff, 2]);
    }
}
