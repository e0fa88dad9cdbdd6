//! Guest memory for the monitor: `x`/`xp` dumps in QEMU's format, the `/fmt` argument,
//! address expressions with `$reg`, and a page-table walker for `info mem` and `info tlb`.

use vm_memory::{Bytes, GuestAddress};

use crate::vcpu::VcpuRegisters;
use devices::memory::GuestMemoryMmap;

/// A parsed `/fmt`: count, format letter, unit size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpFormat {
    pub count: u64,
    pub format: char,
    pub size: usize,
}

impl Default for DumpFormat {
    fn default() -> Self {
        Self {
            count: 1,
            format: 'x',
            size: 4,
        }
    }
}

/// Parse `/[count][format][size]` (QEMU's `x /10xb`); `prev` gives the defaults.
pub fn parse_format(spec: &str, prev: DumpFormat) -> Result<DumpFormat, String> {
    let Some(rest) = spec.strip_prefix('/') else {
        return Ok(prev);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let mut f = prev;
    f.count = if digits.is_empty() {
        1
    } else {
        digits
            .parse()
            .map_err(|_| format!("invalid count: {digits}"))?
    };
    let mut size_given = false;
    for c in rest[digits.len()..].chars() {
        match c {
            'x' | 'd' | 'u' | 'o' | 'c' => f.format = c,
            'b' => (f.size, size_given) = (1, true),
            'h' => (f.size, size_given) = (2, true),
            'w' => (f.size, size_given) = (4, true),
            'g' => (f.size, size_given) = (8, true),
            'i' => return Err("disassembly ('i' format) is not available in troupe".into()),
            other => return Err(format!("invalid char in format: '{other}'")),
        }
    }
    if f.format == 'c' && !size_given {
        f.size = 1;
    }
    if f.count > 1 << 20 {
        return Err("count too large".into());
    }
    Ok(f)
}

/// Evaluate an address expression: numbers (hex `0x`, decimal), `$reg`, `+`, `-`.
pub fn eval_expr(expr: &str, regs: Option<&VcpuRegisters>) -> Result<u64, String> {
    let mut total: u64 = 0;
    let mut sign_neg = false;
    let mut rest = expr.trim();
    if rest.is_empty() {
        return Err("missing address".into());
    }
    loop {
        let end = rest
            .find(['+', '-'])
            .filter(|&i| i > 0)
            .unwrap_or(rest.len());
        let term = rest[..end].trim();
        let v = term_value(term, regs)?;
        total = if sign_neg {
            total.wrapping_sub(v)
        } else {
            total.wrapping_add(v)
        };
        if end == rest.len() {
            return Ok(total);
        }
        sign_neg = &rest[end..end + 1] == "-";
        rest = &rest[end + 1..];
    }
}

fn term_value(term: &str, regs: Option<&VcpuRegisters>) -> Result<u64, String> {
    if let Some(name) = term.strip_prefix('$') {
        let r = regs.ok_or("no CPU to read registers from")?;
        return register(r, name).ok_or_else(|| format!("unknown register: {name}"));
    }
    let parsed = if let Some(h) = term.strip_prefix("0x").or_else(|| term.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        term.parse::<u64>()
    };
    parsed.map_err(|_| format!("invalid expression: '{term}'"))
}

fn register(r: &VcpuRegisters, name: &str) -> Option<u64> {
    let g = &r.regs;
    let s = &r.sregs;
    let low = |v: u64| v & 0xffff_ffff;
    Some(match name {
        "rax" => g.rax,
        "rbx" => g.rbx,
        "rcx" => g.rcx,
        "rdx" => g.rdx,
        "rsi" => g.rsi,
        "rdi" => g.rdi,
        "rbp" => g.rbp,
        "rsp" => g.rsp,
        "r8" => g.r8,
        "r9" => g.r9,
        "r10" => g.r10,
        "r11" => g.r11,
        "r12" => g.r12,
        "r13" => g.r13,
        "r14" => g.r14,
        "r15" => g.r15,
        "rip" | "pc" => g.rip,
        "eax" => low(g.rax),
        "ebx" => low(g.rbx),
        "ecx" => low(g.rcx),
        "edx" => low(g.rdx),
        "esi" => low(g.rsi),
        "edi" => low(g.rdi),
        "ebp" => low(g.rbp),
        "esp" | "sp" => low(g.rsp),
        "eip" => low(g.rip),
        "eflags" => g.rflags,
        "cr0" => s.cr0,
        "cr2" => s.cr2,
        "cr3" => s.cr3,
        "cr4" => s.cr4,
        "cs" => s.cs.selector.into(),
        "ds" => s.ds.selector.into(),
        "es" => s.es.selector.into(),
        "fs" => s.fs.selector.into(),
        "gs" => s.gs.selector.into(),
        "ss" => s.ss.selector.into(),
        _ => return None,
    })
}

/// Format bytes read at `addr` the way QEMU's `memory_dump` does. `read` fills a line's
/// buffer or fails (virtual addresses that do not translate).
pub fn dump(
    fmt: DumpFormat,
    mut addr: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
) -> String {
    let wsize = fmt.size;
    let line_size = if wsize == 1 { 8 } else { 16 };
    let max_digits = match fmt.format {
        'o' => (wsize * 8).div_ceil(3),
        'u' | 'd' => (wsize * 8 * 10).div_ceil(33),
        _ => wsize * 2,
    };
    let mut len = fmt.count * wsize as u64;
    let mut out = String::new();
    while len > 0 {
        out.push_str(&format!("{addr:016x}:"));
        let l = len.min(line_size) as usize;
        let mut buf = vec![0u8; l];
        if !read(addr, &mut buf) {
            out.push_str(" Cannot access memory\n");
            break;
        }
        for chunk in buf.chunks(wsize) {
            let mut v = 0u64;
            for (i, b) in chunk.iter().enumerate() {
                v |= u64::from(*b) << (8 * i);
            }
            out.push(' ');
            match fmt.format {
                'o' => {
                    // C's `%#o`: a leading 0 unless the value is 0.
                    let o = if v == 0 {
                        "0".into()
                    } else {
                        format!("0{v:o}")
                    };
                    out.push_str(&format!("{o:>max_digits$}"));
                }
                'u' => out.push_str(&format!("{v:>max_digits$}")),
                'd' => {
                    let bits = wsize * 8;
                    let sv = if bits == 64 {
                        v as i64
                    } else {
                        ((v << (64 - bits)) as i64) >> (64 - bits)
                    };
                    out.push_str(&format!("{sv:>max_digits$}"));
                }
                'c' => out.push_str(&char_repr(v as u8)),
                _ => out.push_str(&format!("0x{v:0max_digits$x}")),
            }
        }
        out.push('\n');
        addr = addr.wrapping_add(l as u64);
        len -= l as u64;
    }
    out
}

fn char_repr(c: u8) -> String {
    let inner = match c {
        b'\'' => "\\'".to_string(),
        b'\\' => "\\\\".to_string(),
        b'\n' => "\\n".to_string(),
        b'\r' => "\\r".to_string(),
        32..=126 => (c as char).to_string(),
        _ => format!("\\x{c:02x}"),
    };
    format!("'{inner}'")
}

/// Physical read for `xp`: what the machine maps there, or all-ones where nothing is
/// (as QEMU reads unassigned memory). Byte by byte, so a read may straddle regions.
pub async fn read_phys(ctx: &super::MonitorContext, addr: u64, len: usize) -> Vec<u8> {
    ctx.memory.read_phys(addr, len).await
}

/// One leaf mapping found by the page walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub virt: u64,
    pub phys: u64,
    pub size: u64,
    /// The leaf entry (flags as the CPU sees them).
    pub pte: u64,
    /// User and writable as the AND over all levels (for `info mem`).
    pub user: bool,
    pub write: bool,
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Paging mode from the control registers; None when paging is off.
pub fn walk(mem: &GuestMemoryMmap, regs: &VcpuRegisters) -> Option<Vec<Mapping>> {
    let s = &regs.sregs;
    if s.cr0 & 0x8000_0000 == 0 {
        return None;
    }
    let read64 = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap_or(0);
    let read32 = |a: u64| u64::from(mem.read_obj::<u32>(GuestAddress(a)).unwrap_or(0));
    let mut out = Vec::new();
    let pae = s.cr4 & 0x20 != 0;
    let long = s.efer & (1 << 10) != 0;
    // (levels, entry size, entries per table, bits per level)
    if long {
        walk_level(&read64, s.cr3 & ADDR_MASK, 4, 0, true, true, &mut out);
        for m in &mut out {
            // Sign-extend canonical addresses.
            if m.virt & (1 << 47) != 0 {
                m.virt |= 0xffff_0000_0000_0000;
            }
        }
    } else if pae {
        for i in 0..4u64 {
            let pdpte = read64((s.cr3 & 0xffff_ffe0) + i * 8);
            if pdpte & P != 0 {
                walk_level(&read64, pdpte & ADDR_MASK, 2, i << 30, true, true, &mut out);
            }
        }
    } else {
        let cr3 = s.cr3 & 0xffff_f000;
        for i in 0..1024u64 {
            let pde = read32(cr3 + i * 4);
            if pde & P == 0 {
                continue;
            }
            let virt = i << 22;
            if pde & PS != 0 && s.cr4 & 0x10 != 0 {
                out.push(Mapping {
                    virt,
                    phys: pde & 0xffc0_0000,
                    size: 4 << 20,
                    pte: pde,
                    user: pde & US != 0,
                    write: pde & RW != 0,
                });
                continue;
            }
            let pt = pde & 0xffff_f000;
            for j in 0..1024u64 {
                let pte = read32(pt + j * 4);
                if pte & P != 0 {
                    out.push(Mapping {
                        virt: virt | (j << 12),
                        phys: pte & 0xffff_f000,
                        size: 4096,
                        pte,
                        user: pde & pte & US != 0,
                        write: pde & pte & RW != 0,
                    });
                }
            }
        }
    }
    Some(out)
}

/// Walk a 64-bit-entry table of `level` (4 = PML4 .. 1 = PT) at `table`.
fn walk_level(
    read: &dyn Fn(u64) -> u64,
    table: u64,
    level: u32,
    base: u64,
    user: bool,
    write: bool,
    out: &mut Vec<Mapping>,
) {
    if out.len() > 1 << 20 {
        return;
    }
    let shift = 12 + 9 * (level - 1);
    for i in 0..512u64 {
        let e = read(table + i * 8);
        if e & P == 0 {
            continue;
        }
        let virt = base | (i << shift);
        let u = user && e & US != 0;
        let w = write && e & RW != 0;
        if level == 1 || (e & PS != 0 && level <= 3) {
            let size = 1u64 << shift;
            out.push(Mapping {
                virt,
                phys: e & ADDR_MASK & !(size - 1),
                size,
                pte: e,
                user: u,
                write: w,
            });
        } else {
            walk_level(read, e & ADDR_MASK, level - 1, virt, u, w, out);
        }
    }
}

/// `info tlb` lines (QEMU's `print_pte`).
pub fn tlb_text(maps: &[Mapping]) -> String {
    let mut out = String::new();
    for m in maps {
        let e = m.pte;
        let f = |bit: u64, c: char| if e & bit != 0 { c } else { '-' };
        out.push_str(&format!(
            "{:016x}: {:016x} {}{}{}{}{}{}{}{}{}\n",
            m.virt,
            m.phys,
            f(1 << 63, 'X'),
            f(0x100, 'G'),
            f(PS, 'P'),
            f(0x40, 'D'),
            f(0x20, 'A'),
            f(0x10, 'C'),
            f(0x8, 'T'),
            f(US, 'U'),
            f(RW, 'W'),
        ));
    }
    out
}

/// `info mem` lines: contiguous virtual ranges with the same protection.
pub fn mem_text(maps: &[Mapping]) -> String {
    let mut out = String::new();
    let mut cur: Option<(u64, u64, bool, bool)> = None;
    let flush = |c: (u64, u64, bool, bool), out: &mut String| {
        out.push_str(&format!(
            "{:016x}-{:016x} {:016x} {}r{}\n",
            c.0,
            c.1,
            c.1 - c.0,
            if c.2 { 'u' } else { '-' },
            if c.3 { 'w' } else { '-' }
        ));
    };
    for m in maps {
        match &mut cur {
            Some(c) if c.1 == m.virt && c.2 == m.user && c.3 == m.write => c.1 += m.size,
            _ => {
                if let Some(c) = cur.take() {
                    flush(c, &mut out);
                }
                cur = Some((m.virt, m.virt + m.size, m.user, m.write));
            }
        }
    }
    if let Some(c) = cur {
        flush(c, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let d = DumpFormat::default();
        assert_eq!(
            parse_format("/4xb", d).unwrap(),
            DumpFormat {
                count: 4,
                format: 'x',
                size: 1
            }
        );
        assert_eq!(parse_format("/2g", d).unwrap().size, 8);
        assert_eq!(parse_format("/3c", d).unwrap().size, 1);
        assert!(parse_format("/4z", d).is_err());
    }

    #[test]
    fn dump_matches_qemu_layout() {
        let data: Vec<u8> = (0u8..32).collect();
        let read = |a: u64, b: &mut [u8]| {
            b.copy_from_slice(&data[a as usize..a as usize + b.len()]);
            true
        };
        let f = parse_format("/6xw", DumpFormat::default()).unwrap();
        assert_eq!(
            dump(f, 0, read),
            "0000000000000000: 0x03020100 0x07060504 0x0b0a0908 0x0f0e0d0c\n\
             0000000000000010: 0x13121110 0x17161514\n"
        );
        let f = parse_format("/3db", DumpFormat::default()).unwrap();
        assert_eq!(dump(f, 1, read), "0000000000000001:   1   2   3\n");
        let f = parse_format("/2c", DumpFormat::default()).unwrap();
        let text = b"A\n";
        let r2 = |a: u64, b: &mut [u8]| {
            b.copy_from_slice(&text[a as usize..a as usize + b.len()]);
            true
        };
        assert_eq!(dump(f, 0, r2), "0000000000000000: 'A' '\\n'\n");
        assert_eq!(
            dump(DumpFormat::default(), 0x1000, |_, _| false),
            "0000000000001000: Cannot access memory\n"
        );
    }

    #[test]
    fn expressions() {
        let mut r = VcpuRegisters::default();
        r.regs.rsp = 0x7000;
        assert_eq!(eval_expr("0x1000+16", None).unwrap(), 0x1010);
        assert_eq!(eval_expr("$esp - 0x10", Some(&r)).unwrap(), 0x6ff0);
        assert!(eval_expr("$foo", Some(&r)).is_err());
        assert!(eval_expr("zz", None).is_err());
    }
}
