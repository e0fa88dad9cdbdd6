#!/usr/bin/env python3
"""Real-client helpers for tests/vnc.rs (vncdotool and PIL; TigerVNC screenshots).

  capture HOST::PORT ENCODING OUT.png [PASSWORD]  vncdotool capture with one encoding
                                                  (raw, hextile, zrle); exit 0 on success
  compare A.img B.img                             print "mismatch N of M" (exact RGB)
  find SCREEN.img EXPECTED.img                    locate EXPECTED inside SCREEN (a viewer
                                                  window on an X screenshot), print
                                                  "found X Y mismatch N of M" or "notfound"
  keys HOST::PORT KEY...                          vncdotool key presses (names as vncdo)
"""
import sys


def load(path):
    from PIL import Image
    return Image.open(path).convert("RGB")


def capture(server, encoding, out, password=None):
    from vncdotool import api, client, rfb
    client.VNCDoToolClient.encoding = {
        "raw": rfb.Encoding.RAW,
        "hextile": rfb.Encoding.HEXTILE,
        "zrle": rfb.Encoding.ZRLE,
    }[encoding]
    c = api.connect(server, password=password, timeout=20)
    try:
        c.captureScreen(out)
    finally:
        try:
            c.disconnect()
        except Exception:
            pass
        api.shutdown()


def keys(server, names):
    from vncdotool import api
    c = api.connect(server, timeout=20)
    try:
        for n in names:
            c.keyPress(n)
    finally:
        c.disconnect()
        api.shutdown()


def compare(a, b):
    ia, ib = load(a), load(b)
    if ia.size != ib.size:
        print(f"size {ia.size} vs {ib.size}")
        return
    da, db = ia.tobytes(), ib.tobytes()
    n = sum(1 for i in range(0, len(da), 3) if da[i:i + 3] != db[i:i + 3])
    print(f"mismatch {n} of {ia.size[0] * ia.size[1]}")


def find(screen_path, exp_path):
    s, e = load(screen_path), load(exp_path)
    sw, sh = s.size
    ew, eh = e.size
    sd, ed = s.load(), e.load()
    # Fingerprint: a handful of distinctive pixels of the expected image.
    probes = [(x, y) for x, y in [(1, 1), (ew // 8 + 1, 1), (ew // 2, eh // 3), (ew - 2, eh // 2),
                                   (3, eh - 3), (ew // 3, eh // 4), (ew - 5, eh - 5)]]
    for oy in range(0, sh - eh + 1):
        for ox in range(0, sw - ew + 1):
            if all(sd[ox + x, oy + y] == ed[x, y] for x, y in probes):
                bad = 0
                for y in range(eh):
                    for x in range(ew):
                        if sd[ox + x, oy + y] != ed[x, y]:
                            bad += 1
                print(f"found {ox} {oy} mismatch {bad} of {ew * eh}")
                return
    print("notfound")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "capture":
        capture(args[0], args[1], args[2], args[3] if len(args) > 3 else None)
    elif cmd == "compare":
        compare(args[0], args[1])
    elif cmd == "find":
        find(args[0], args[1])
    elif cmd == "keys":
        keys(args[0], args[1:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
