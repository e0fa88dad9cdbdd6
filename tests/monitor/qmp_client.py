"""Drive troupe's QMP with QEMU's own Python client (qemu.qmp) and check the shapes
QEMU documents. Usage: qmp_client.py HOST PORT. Prints 'qmp-client: ok' on success;
any mismatch raises with the offending reply."""

import asyncio
import re
import sys

from qemu.qmp import QMPClient, ExecuteError


def check(cond, what, value):
    if not cond:
        raise AssertionError(f"{what}: {value!r}")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


async def main(host, port):
    q = QMPClient("troupe-test")
    await q.connect((host, port))
    greeting = q.greeting._asdict()
    v = greeting["QMP"]["version"]["qemu"]
    check((v["major"], v["minor"], v["micro"]) == (7, 2, 22), "greeting version", v)
    check(greeting["QMP"]["capabilities"] == ["oob"], "capabilities", greeting)

    r = await q.execute("query-version")
    check(all(is_int(r["qemu"][k]) for k in ("major", "minor", "micro")), "query-version", r)
    check(isinstance(r["package"], str), "query-version package", r)

    r = await q.execute("query-status")
    check(r == {"status": "running", "singlestep": False, "running": True}, "query-status", r)

    r = await q.execute("query-kvm")
    check(r == {"enabled": True, "present": True}, "query-kvm", r)

    r = await q.execute("query-name")
    check(r == {"name": "qmp-test-vm"}, "query-name", r)

    r = await q.execute("query-uuid")
    check(r["UUID"] == "6f2c1d9a-0b3e-4c5d-8e7f-112233445566", "query-uuid", r)

    r = await q.execute("query-cpus-fast")
    check(isinstance(r, list) and len(r) == 2, "query-cpus-fast count", r)
    for i, c in enumerate(r):
        check(c["cpu-index"] == i and is_int(c["thread-id"]), "cpu entry", c)
        check(c["target"] == "x86_64" and isinstance(c["qom-path"], str), "cpu entry", c)
        check(all(is_int(c["props"][k]) for k in ("socket-id", "core-id", "thread-id")), "props", c)
    print("threads", " ".join(str(c["thread-id"]) for c in r))

    r = await q.execute("query-pci")
    check(len(r) == 1 and r[0]["bus"] == 0, "query-pci buses", r)
    devs = r[0]["devices"]
    for d in devs:
        for k in ("bus", "slot", "function", "irq_pin"):
            check(is_int(d[k]), f"pci {k}", d)
        check(is_int(d["class_info"]["class"]) and isinstance(d["class_info"]["desc"], str), "class_info", d)
        for k in ("vendor", "device", "subsystem-vendor", "subsystem"):
            check(is_int(d["id"][k]), f"pci id {k}", d)
        check(isinstance(d["qdev_id"], str) and isinstance(d["regions"], list), "pci", d)
        for reg in d["regions"]:
            check(reg["type"] in ("io", "memory") and is_int(reg["bar"]) and is_int(reg["size"]), "region", reg)
    ids = {(d["id"]["vendor"], d["id"]["device"]) for d in devs}
    check((0x8086, 0x1237) in ids and (0x8086, 0x7000) in ids, "i440FX and PIIX3 present", ids)

    r = await q.execute("query-block")
    hd = [b for b in r if b["device"] == "ide0-hd0"]
    check(len(hd) == 1, "ide0-hd0 in query-block", r)
    hd = hd[0]
    check(hd["removable"] is False and hd["locked"] is False and isinstance(hd["type"], str), "block", hd)
    ins = hd["inserted"]
    check(ins["file"].endswith("disk.raw") and ins["drv"] == "raw" and ins["ro"] is False, "inserted", ins)
    check(ins["image"]["virtual-size"] == 4 << 20, "virtual-size", ins)

    r = await q.execute("query-blockstats")
    check(any(b["device"] == "ide0-hd0" and is_int(b["stats"]["rd_bytes"]) for b in r), "blockstats", r)

    r = await q.execute("query-vnc")
    check(r["enabled"] is True and r["auth"] == "none" and is_int(int(r["service"])), "query-vnc", r)

    r = await q.execute("query-chardev")
    labels = {c["label"]: c for c in r}
    check("serial0" in labels and "compat_monitor0" in labels, "query-chardev labels", r)
    check(all(isinstance(c["filename"], str) and isinstance(c["frontend-open"], bool) for c in r), "chardev", r)

    r = await q.execute("query-commands")
    names = {c["name"] for c in r}
    for n in ("query-version", "query-status", "query-kvm", "query-name", "query-uuid",
              "query-cpus-fast", "query-pci", "query-block", "query-vnc", "query-chardev",
              "query-commands", "stop", "cont", "system_reset", "system_powerdown", "quit",
              "screendump", "send-key", "human-monitor-command", "set_password"):
        check(n in names, f"{n} in query-commands", sorted(names))

    r = await q.execute("human-monitor-command", {"command-line": "info status"})
    check(r == "VM status: running\r\n", "human-monitor-command", r)

    # Lifecycle commands and their events, each before the command's return.
    events = []

    async def listen():
        async for e in q.events:
            events.append((e["event"], e.get("data"), e["timestamp"]))

    task = asyncio.create_task(listen())
    await q.execute("stop")
    r = await q.execute("query-status")
    check(r["status"] == "paused" and r["running"] is False, "paused", r)
    await q.execute("cont")
    await q.execute("system_reset")
    await asyncio.sleep(0.3)
    task.cancel()
    got = [(n, d) for n, d, _ in events]
    check(got[:3] == [("STOP", None), ("RESUME", None),
                      ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})],
          "events", events)
    for _, _, ts in events:
        check(is_int(ts["seconds"]) and is_int(ts["microseconds"]) and ts["seconds"] > 1_600_000_000,
              "timestamp", ts)

    # Errors carry QEMU's classes.
    for cmd, args, cls, desc in [
        ("no-such-command", None, "CommandNotFound", "The command no-such-command has not been found"),
        ("query-status", {"bogus": 1}, "GenericError", "Parameter 'bogus' is unexpected"),
        ("screendump", {}, "GenericError", "Parameter 'filename' is missing"),
        ("query-balloon", None, "DeviceNotActive", "No balloon device has been activated"),
        ("qmp_capabilities", None, "CommandNotFound", "Capabilities negotiation is already complete, command ignored"),
    ]:
        try:
            await q.execute(cmd, args)
            raise AssertionError(f"{cmd} should fail")
        except ExecuteError as e:
            check(e.error.error.class_ == cls and e.error.error.desc == desc, cmd, e.error)

    await q.disconnect()
    print("qmp-client: ok")


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
