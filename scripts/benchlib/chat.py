"""`scripts/bench chat`: reliability, latency and cost of text consults on bad links.

For each link profile: a real relay, three members each behind their own ``badlink``, each
running a long-lived session (as the TUI does) that sends paced messages, plus one-liner
``medcomm send`` processes from the same devices. During the run the links are cut on
purpose and the relay is SIGKILLed and restarted. At the end every member's history is
checked: nothing lost, nothing duplicated, nothing out of order, every `medcomm send` that
exited 0 present everywhere. Then the wire cost of one 60-character message on a clean
link, and process start times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib.procs import MEDCOMM, Badlink, Relay, load_badlink_profiles, medcomm, socket_counters

LINKS = load_badlink_profiles()
MEMBERS = [("amina", "clinic"), ("dr.chen", "doctor"), ("dr.osei", "doctor")]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Scenario:
    """One relay, three proxied members, one consult."""

    def __init__(self, root: Path, profile: str, seed: int, tls: bool = False) -> None:
        self.root = root
        self.profile = profile
        self.relay = Relay(root / "relay", extra=["--tls", "self-signed"] if tls else []).start()
        pin = self.relay.fingerprint()
        self.links: list[Badlink] = []
        self.homes: list[Path] = []
        for i, (name, role) in enumerate(MEMBERS):
            link = Badlink(self.relay.port, profile, root / f"link-{i}.json", seed=seed + i).start()
            link.scheme = self.relay.scheme
            self.links.append(link)
            home = root / name
            code = self.relay.enroll(name, role)
            login = ["login", link.url, name, code, *(["--fingerprint", pin] if pin else [])]
            out = medcomm(*login, home=home, timeout=120)
            if out.returncode:  # a cut during login: the same code again is fine
                out = medcomm(*login, home=home, timeout=120)
            if out.returncode:
                raise RuntimeError(f"login failed: {out.stderr.strip()}")
            self.homes.append(home)
        others = ",".join(n for n, _ in MEMBERS[1:])
        for _ in range(3):
            out = medcomm("consult", "open", "bench", "--with", others, home=self.homes[0], timeout=120)
            if out.returncode == 0:
                break
        if out.returncode:
            raise RuntimeError(f"consult open failed: {out.stderr.strip()}")
        self.consult = out.stdout.strip()

    def close(self) -> None:
        for link in self.links:
            link.stop()
        self.relay.stop()


def start_members(
    sc: Scenario, counts: list[int], rate: float, out_dir: Path, start_delay: float = 0.0, plain: bool = False
) -> list[subprocess.Popen[str]]:
    procs = []
    member_py = Path(__file__).with_name("member.py")
    for i, ((name, _), home) in enumerate(zip(MEMBERS, sc.homes, strict=True)):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(member_py),
                    "--home",
                    str(home),
                    "--name",
                    name,
                    "--consult",
                    sc.consult,
                    "--count",
                    str(counts[i]),
                    "--rate",
                    str(rate),
                    "--seed",
                    str(i + 1),
                    "--start-delay",
                    str(start_delay),
                    "--out",
                    str(out_dir / f"member-{i}.json"),
                    *(["--plain"] if plain else []),
                ],
                stdout=subprocess.PIPE,
                stderr=(out_dir / f"member-{i}.log").open("w"),
                text=True,
                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "scripts")),
            )
        )
    return procs


def wait_lines(procs: list[subprocess.Popen[str]], key: str, timeout: float) -> bool:
    """Wait until every member printed a JSON line with ``key`` (bounded)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.stdout is not None
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                return False
            if key in json.loads(line):
                break
        else:
            return False
    return True


def finish_members(procs: list[subprocess.Popen[str]], out_dir: Path, timeout: float) -> list[dict]:
    for p in procs:
        p.terminate()
    results = []
    for i, p in enumerate(procs):
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
        path = out_dir / f"member-{i}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {"final": "no result"})
    return results


def reliability(
    profile: str, total: int, rate: float, root: Path, cut_every: float, kills: int, seed: int
) -> dict[str, object]:
    sc = Scenario(root, profile, seed)
    rng = random.Random(seed)
    cli_sends = max(10, total // 20)
    per_member = (total - cli_sends + 2) // 3
    counts = [per_member] * 3
    cli_results: list[tuple[str, int]] = []
    kill_times: list[float] = []
    cli_errors: list[str] = []
    stop = threading.Event()
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = start_members(sc, counts, rate, root)
        if not wait_lines(procs, "ready", 180):
            raise RuntimeError("members did not get ready")
        expected = per_member / rate

        def one_liners() -> None:
            for n in range(cli_sends):
                if stop.is_set():
                    return
                i = rng.randrange(3)
                text = f"bench cli-{MEMBERS[i][0]} {n} ".ljust(60, ".")
                out = medcomm("send", sc.consult, text, "--timeout", "60", home=sc.homes[i], timeout=120)
                cli_results.append((text, out.returncode))
                if out.returncode:
                    cli_errors.append(f"exit {out.returncode}: {out.stderr.strip().splitlines()[0][:160]}")
                stop.wait(max(0.0, expected / cli_sends - 1.0))

        def chaos() -> None:
            kill_at = sorted(rng.uniform(0.15, 0.85) * expected for _ in range(kills))
            t0 = time.monotonic()
            next_cut = t0 + cut_every
            while not stop.is_set():
                now = time.monotonic()
                if kill_at and now - t0 >= kill_at[0]:
                    kill_at.pop(0)
                    kill_times.append(time.time())
                    sc.relay.kill()
                    stop.wait(rng.uniform(0.5, 2.0))
                    sc.relay.start()
                if now >= next_cut:
                    rng.choice(sc.links).cut()
                    next_cut = now + rng.uniform(0.5, 1.5) * cut_every
                stop.wait(0.2)

        threads = [threading.Thread(target=one_liners), threading.Thread(target=chaos)]
        started = time.monotonic()
        for t in threads:
            t.start()
        done = wait_lines(procs, "done_sending", expected * 4 + 300)
        threads[0].join(600)
        if sc.relay.kills < kills:  # make sure the planned crashes happened before stopping
            while sc.relay.kills < kills and threads[1].is_alive():
                time.sleep(0.5)
        stop.set()
        threads[1].join(60)
        duration = time.monotonic() - started
        time.sleep(3)
        results = finish_members(procs, root, 300)
        histories = []
        for home in sc.homes:
            out = medcomm("history", sc.consult, "--json", "--offline", home=home)
            histories.append([json.loads(x) for x in out.stdout.splitlines()])
        cuts = sum(link.counters().get("cuts", 0) for link in sc.links)
        starts = [link.started_at for link in sc.links]
        report = check(profile, results, histories, cli_results, done, duration, cuts, sc.relay.kills, starts)
        report["cli_errors"] = cli_errors
        return report
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
        sc.close()


def catchups_nominal(profile: str, results: list[dict], link_starts: list[float]) -> dict[str, object]:
    """Catch-ups in round trips of the link as configured (up + down delay), not as each
    connection estimated it (its own handshake, which one jittered packet moves by half).

    A catch-up that overlapped one of the link's stalls (nothing moves for seconds) is counted
    apart: no protocol catches up during a stall, and the target is about round trips.
    """
    link = LINKS[profile]
    rtt = 2 * link.delay_ms / 1000.0
    if rtt <= 0:
        return {}
    clean: list[float] = []
    stalled: list[float] = []
    opens: list[float] = []
    net: list[float] = []
    slow: list[dict[str, float]] = []
    rate = link.down_kbit * 1000 / 8 if link.down_kbit else 0.0
    for r, started in zip(results, link_starts, strict=False):
        for c in r.get("catchups", []):
            ratio = c["from_connect"] / rtt
            begin, end = c.get("at", 0.0) - c["from_connect"], c.get("at", 0.0)
            hit = link.stall is not None and started > 0 and _overlaps_stall(begin, end, started, *link.stall)
            (stalled if hit else clean).append(ratio)
            opens.append(c["from_open"] / rtt)
            moving = c.get("backlog_bytes", 0) / rate if rate else 0.0  # the backlog at the link's rate
            if not hit:
                net.append((c["from_connect"] - moving) / rtt)
            if ratio > 3 and not hit:
                slow.append(
                    {
                        "rtts": round(ratio, 2),
                        "backlog": c.get("backlog", -1),
                        "moving_rtts": round(moving / rtt, 2),
                    }
                )
    both = clean + stalled
    return {
        "nominal_rtt_s": rtt,
        "catchup_rtts_median": round(statistics.median(both), 2) if both else None,
        "catchup_rtts_max": round(max(both), 2) if both else None,
        "catchups_within_3_rtt": f"{sum(x <= 3 for x in both)}/{len(both)}",
        "catchups_in_stall": len(stalled),
        "catchup_clean_rtts_max": round(max(clean), 2) if clean else None,
        "catchups_clean_within_3_rtt": f"{sum(x <= 3 for x in clean)}/{len(clean)}",
        "catchup_net_rtts_median": round(statistics.median(net), 2) if net else None,
        "catchup_net_rtts_max": round(max(net), 2) if net else None,
        "catchups_net_within_3_rtt": f"{sum(x <= 3 for x in net)}/{len(net)}",
        "catchup_from_open_rtts_median": round(statistics.median(opens), 2) if opens else None,
        "catchup_from_open_rtts_max": round(max(opens), 2) if opens else None,
        "catchups_slow": slow,
    }


def _overlaps_stall(begin: float, end: float, started: float, duration: float, every: float) -> bool:
    """badlink stalls for ``duration`` every ``every`` s, the first one ``every`` after it starts."""
    k = max(1, int((begin - started) // every))
    while started + k * every <= end:
        if started + k * every + duration >= begin:
            return True
        k += 1
    return False


def check(
    profile: str,
    results: list[dict],
    histories: list[list[dict]],
    cli: list[tuple[str, int]],
    done: bool,
    duration: float,
    cuts: int,
    kills: int,
    link_starts: list[float],
) -> dict[str, object]:
    sent_by_members = {t for r in results for t in r.get("sent", {})}
    cli_ok = {t for t, rc in cli if rc == 0}
    cli_attempted = {t for t, _ in cli}
    all_sent = sent_by_members | cli_attempted
    lost = dup = disorder = 0
    lost_cli_ok = 0
    reference = None
    for hist in histories:
        texts = [m["text"] for m in hist if m["kind"] == "text" and m["seq"] is not None]
        seqs = [m["seq"] for m in hist if m["seq"] is not None]
        if seqs != sorted(set(seqs)) or (seqs and seqs[0] != 1):  # key messages take seqs, unshown
            disorder += 1
        dup += len(texts) - len(set(texts))
        lost += len(sent_by_members - set(texts))
        lost_cli_ok += len(cli_ok - set(texts))
        last_n: dict[str, int] = {}
        for t in texts:
            _, who, n, *_ = t.split(" ")
            if int(n) <= last_n.get(who, -1):
                disorder += 1
            last_n[who] = int(n)
        view = [(m["seq"], m["id"]) for m in hist if m["seq"] is not None]
        if reference is None:
            reference = view
        elif view != reference:
            disorder += 1
    latencies = []
    for r in results:
        for t, s in r.get("sent", {}).items():
            for other in results:
                if other is not r and t in other.get("received", {}):
                    latencies.append(other["received"][t]["t"] - s["t"])
    catch = [c for r in results for c in r.get("catchups", [])]
    rtts = [c["from_connect"] / c["rtt"] for c in catch if c["rtt"] > 0]
    nominal = catchups_nominal(profile, results, link_starts)
    return {
        "profile": profile,
        "messages": len(all_sent),
        "cli_sends": len(cli),
        "cli_exit0": len(cli_ok),
        "lost": lost,
        "lost_cli_exit0": lost_cli_ok,
        "duplicated": dup,
        "out_of_order": disorder,
        "all_sent_finished": done,
        "duration_s": round(duration, 1),
        "cuts": cuts,
        "relay_kills": kills,
        "reconnects": sum(r.get("connects", 0) for r in results),
        "latency_p50_s": round(pct(latencies, 0.5), 3),
        "latency_p95_s": round(pct(latencies, 0.95), 3),
        "catchup_own_rtts_median": round(statistics.median(rtts), 2) if rtts else None,
        "catchup_own_rtts_max": round(max(rtts), 2) if rtts else None,
        **nominal,
        "final": [r.get("final") for r in results],
    }


def wire_cost(root: Path, n: int, tls: bool = False, plain: bool = False) -> dict[str, object]:
    """Bytes per 60-character message on a clean link, both directions, acks and receipts
    (with ``tls``: through a wss:// relay, TLS records included; with ``plain``: bodies not
    end-to-end encrypted, for the comparison). Key messages count: they are part of the cost."""
    sc = Scenario(root, "clean", 7, tls=tls)
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = start_members(sc, [n, 0, 0], 20.0, root, start_delay=1.5, plain=plain)
        if not wait_lines(procs, "ready", 60):
            raise RuntimeError("members did not get ready")
        time.sleep(0.5)
        before = [link.counters() for link in sc.links]
        k0 = socket_counters(sc.links[0].port)
        wait_lines(procs[:1], "done_sending", 120)
        time.sleep(2.0)  # acks and coalesced receipts settle
        after = [link.counters() for link in sc.links]
        k1 = socket_counters(sc.links[0].port)
        finish_members(procs, root, 60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sc.close()

    def delta(i: int, key: str) -> int:
        return int(after[i].get(key, 0)) - int(before[i].get(key, 0))

    sender_bytes = delta(0, "bytes_up") + delta(0, "bytes_down")
    segs = (k1["segs_out"] - k0["segs_out"]) + (k1["segs_in"] - k0["segs_in"])
    receiver_bytes = [delta(i, "bytes_up") + delta(i, "bytes_down") for i in (1, 2)]
    return {
        "messages": n,
        "sender_ws_bytes_per_msg": round(sender_bytes / n, 1),
        "sender_up_per_msg": round(delta(0, "bytes_up") / n, 1),
        "sender_down_per_msg": round(delta(0, "bytes_down") / n, 1),
        "sender_segments_per_msg": round(segs / n, 2),
        "sender_wire_bytes_per_msg": round((sender_bytes + 52 * segs) / n, 1),
        "receiver_ws_bytes_per_msg": round(statistics.mean(receiver_bytes) / n, 1),
        "json_vs_msgpack": json_comparison(),
    }


def json_comparison() -> dict[str, int]:
    """The same four frames of one message's life as named-field JSON vs our msgpack."""
    import base64

    from medcomm.core import wire

    cid, text = os.urandom(16), ("x" * 60).encode()
    frames = [
        wire.Send("abc123", cid, 1, text),
        wire.Stored(cid, "abc123", 1234, 1795000000000),
        wire.Receipts("abc123", "dr.chen", 1234, 0),
        wire.Receipts("abc123", "dr.osei", 1234, 0),
    ]

    def as_json(f: wire.Frame) -> bytes:
        d = {"type": type(f).__name__.lower()}
        for k in wire.field_names(type(f)):
            v = getattr(f, k)
            d[k] = base64.b64encode(v).decode() if isinstance(v, bytes) else v
        return json.dumps(d, separators=(",", ":")).encode()

    return {
        "msgpack": sum(len(wire.encode(f)) for f in frames),
        "json": sum(len(as_json(f)) for f in frames),
    }


def startup(root: Path) -> dict[str, float]:
    def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, timeout=60)
        return time.perf_counter() - t

    helps = [timed([*MEDCOMM, "--help"]) for _ in range(7)]
    relay = Relay(root / "relay-start").start()
    try:
        home = root / "starter"
        code = relay.enroll("starter", "clinic")
        medcomm("login", f"ws://127.0.0.1:{relay.port}", "starter", code, home=home)
        cid = medcomm("consult", "open", "t", home=home).stdout.strip()
        env = dict(os.environ, MEDCOMM_HOME=str(home))
        sends = [timed([*MEDCOMM, "send", cid, "x" * 60], env) for _ in range(7)]
    finally:
        relay.stop()
    return {
        "help_median_s": round(statistics.median(helps), 3),
        "send_median_s": round(statistics.median(sends), 3),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profiles", default="edge,flaky", help="comma-separated badlink profiles")
    p.add_argument("--messages", type=int, default=1000, help="messages per profile, all members")
    p.add_argument("--rate", type=float, default=2.0, help="messages/s per member session")
    p.add_argument("--cut-every", type=float, default=6.0, help="mean seconds between forced cuts")
    p.add_argument("--kills", type=int, default=3, help="relay SIGKILLs per profile")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="small smoke run (120 messages, flaky only)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", type=Path, help="work in this dir and keep it (logs, databases)")
    args = p.parse_args(argv)
    if args.quick:
        args.profiles, args.messages, args.rate, args.cut_every, args.kills = "flaky", 120, 4.0, 3.0, 1
    report: dict[str, object] = {"cores": os.cpu_count(), "runs": []}
    print(
        f"what ran: 3 members, each behind its own badlink; {args.messages} messages per profile "
        f"({args.rate}/s per member session, 5% as `medcomm send` one-liners); a forced cut every "
        f"~{args.cut_every:.0f} s on top of each profile's own faults; {args.kills} relay SIGKILL+restart "
        f"per profile; {os.cpu_count()} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="medcomm-bench-") as tmp:
        root = Path(tmp)
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        for profile in args.profiles.split(","):
            r = reliability(
                profile, args.messages, args.rate, root / profile, args.cut_every, args.kills, args.seed
            )
            report["runs"].append(r)  # type: ignore[union-attr]
            print_run(r)
        wc = wire_cost(root / "wire", 100 if not args.quick else 30)
        wc["tls"] = wire_cost(root / "wire-tls", 100 if not args.quick else 30, tls=True)
        wc["plain"] = wire_cost(root / "wire-plain", 100 if not args.quick else 30, plain=True)
        report["wire"] = wc
        st = startup(root)
        report["startup"] = st
    print_wire(wc, st)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    bad = any(
        r["lost"] or r["duplicated"] or r["out_of_order"] or r["lost_cli_exit0"] for r in report["runs"]
    )  # type: ignore[index,union-attr]
    return 1 if bad else 0


def print_run(r: dict[str, object]) -> None:
    print(f"\n== {r['profile']} ==")
    rows = [
        (
            "messages (cli one-liners, exit 0)",
            f"{r['messages']} ({r['cli_sends']}, {r['cli_exit0']})",
            "",
        ),
        (
            "lost / duplicated / out of order",
            f"{r['lost']} / {r['duplicated']} / {r['out_of_order']}",
            "0 / 0 / 0",
        ),
        ("`medcomm send` exit 0 missing from a history", r["lost_cli_exit0"], "0"),
        (
            "connection cuts (badlink) / relay SIGKILLs",
            f"{r['cuts']} / {r['relay_kills']}",
            ">= 20 / >= 3",
        ),
        ("reconnects (member sessions)", r["reconnects"], ""),
        ("delivery latency p50 / p95", f"{r['latency_p50_s']} s / {r['latency_p95_s']} s", ""),
        (
            f"catch-up, link RTTs ({r.get('nominal_rtt_s')} s) from TCP connect: median / max",
            f"{r.get('catchup_rtts_median')} / {r.get('catchup_rtts_max')} "
            f"({r.get('catchups_within_3_rtt')} within 3)",
            "<= 3",
        ),
        (
            "  the same without catch-ups that overlapped a link stall: max",
            f"{r.get('catchup_clean_rtts_max')} ({r.get('catchups_clean_within_3_rtt')} within 3; "
            f"{r.get('catchups_in_stall')} in a stall)",
            "<= 3",
        ),
        (
            "  and less the time the backlog takes at the link's rate: median / max",
            f"{r.get('catchup_net_rtts_median')} / {r.get('catchup_net_rtts_max')} "
            f"({r.get('catchups_net_within_3_rtt')} within 3)",
            "<= 3",
        ),
        (
            "  from WebSocket open (link RTTs): median / max",
            f"{r.get('catchup_from_open_rtts_median')} / {r.get('catchup_from_open_rtts_max')}",
            "",
        ),
        (
            "  in the connection's own RTT estimate: median / max",
            f"{r['catchup_own_rtts_median']} / {r['catchup_own_rtts_max']}",
            "",
        ),
        ("run time", f"{r['duration_s']} s", ""),
        ("final sync", ", ".join(map(str, r["final"])), ""),  # type: ignore[call-overload]
    ]
    for name, value, target in rows:
        print(f"  {name:<62} {value!s:<34} {target}")
    for slow in r.get("catchups_slow", []):  # type: ignore[attr-defined]
        print(
            f"  slow catch-up outside stalls: {slow['rtts']} RTT, {slow['backlog']} messages of backlog "
            f"({slow['moving_rtts']} RTT to move at the link's rate)"
        )
    for err in r.get("cli_errors", []):  # type: ignore[attr-defined]
        print(f"  one-liner that did not exit 0: {err}")


def print_wire(wc: dict[str, object], st: dict[str, float]) -> None:
    print("\n== wire cost of one 60-character message (clean link, 3 members; TCP payload bytes) ==")
    print(
        f"  sender, WebSocket bytes both directions incl. ack + receipts: {wc['sender_ws_bytes_per_msg']} "
        f"(up {wc['sender_up_per_msg']}, down {wc['sender_down_per_msg']})   target < 250"
    )
    print(
        f"  sender, with IPv4+TCP headers ({wc['sender_segments_per_msg']} segments/msg incl. pure ACKs, "
        f"52 B each): {wc['sender_wire_bytes_per_msg']}"
    )
    print(f"  each receiver, WebSocket bytes both directions: {wc['receiver_ws_bytes_per_msg']}")
    jc = wc["json_vs_msgpack"]
    print(
        f"  one message's frames (send, stored, 2 receipts): msgpack {jc['msgpack']} B vs "  # type: ignore[index]
        f"named-field JSON {jc['json']} B"
    )  # type: ignore[index]
    plain = wc.get("plain")
    if isinstance(plain, dict):
        sealed_s, plain_s = float(wc["sender_ws_bytes_per_msg"]), float(plain["sender_ws_bytes_per_msg"])  # type: ignore[arg-type]
        sealed_r, plain_r = float(wc["receiver_ws_bytes_per_msg"]), float(plain["receiver_ws_bytes_per_msg"])  # type: ignore[arg-type]
        print(
            f"  end-to-end encryption: sender {sealed_s} B vs {plain_s} B unsealed "
            f"({sealed_s - plain_s:+.1f} B), "
            f"each receiver {sealed_r} vs {plain_r} B ({sealed_r - plain_r:+.1f} B): the 21-byte seal, "
            "plus the key messages spread over the run"
        )
    tls = wc.get("tls")
    if isinstance(tls, dict):
        print(
            f"  the same through a wss:// relay (TLS records): sender {tls['sender_ws_bytes_per_msg']} B "
            f"(+{tls['sender_ws_bytes_per_msg'] - wc['sender_ws_bytes_per_msg']:.1f}), with headers "  # type: ignore[operator]
            f"{tls['sender_wire_bytes_per_msg']} B ({tls['sender_segments_per_msg']} segments/msg); "
            f"each receiver {tls['receiver_ws_bytes_per_msg']} B"
        )
    print("\n== process start (median of 7) ==")
    print(
        f"  medcomm --help: {st['help_median_s']} s (target < 0.3)   "
        f"medcomm send to a loopback relay: {st['send_median_s']} s (target < 1)"
    )
