#!/usr/bin/env python3
"""Writes the golden scenarios' input.jsonl files.

The inputs are small and meant to be read: each scenario's README line
below says what it checks. Expected outputs live beside each input in
expected/ and are reviewed by hand (see tests/golden/README.md).
"""
import json, os

DAY = "2026-01-0{}"

def ev(day, hm, kind, device=None, ip=None, account=None, **extra):
    """hm: "HH:MM", or "HH:MM:SS" for a time within a minute."""
    hms = hm if hm.count(":") == 2 else f"{hm}:00"
    e = {"ts": f"2026-01-{day:02d}T{hms}Z", "kind": kind}
    if device: e["device_id"] = device
    if ip: e["ip"] = ip
    if account: e["account_id"] = account
    e.update(extra)
    return e

def write(name, events, raw_lines=()):
    os.makedirs(name, exist_ok=True)
    with open(os.path.join(name, "input.jsonl"), "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
        for r in raw_lines:
            f.write(r + "\n")

def evenings(days, ip, pairs):
    """pairs: list of (device, account-or-None, minute offset) per evening."""
    out = []
    for d in days:
        for dev, acct, m in pairs:
            out.append(ev(d, f"20:{m:02d}", "page_view", dev, ip, acct))
    return out

# 1. Sign-in persists after sign-out; sign-in via activity with account_id.
write("signin-persistence", [
    ev(5, "08:00", "login", "phone-1", "81.2.3.4", "alice"),
    ev(5, "08:01", "page_view", "phone-1", "81.2.3.4", "alice"),
    ev(5, "08:30", "logout", "phone-1", "81.2.3.4", "alice"),
    ev(6, "09:00", "page_view", "phone-1", "81.2.3.4"),
    ev(7, "10:00", "app_open", "tablet-1", "2a02:10:20:30::5", "bob", source="app"),
])

# 2. One person at home: signed-in phone, unsigned laptop a minute apart on
#    six evenings -> inferred link with its evidence.
SIX = [5, 6, 7, 8, 9, 10]
write("household-single", evenings(SIX, "81.2.3.10",
    [("alice-phone", "alice", 0), ("alice-laptop", None, 1)]))

# 3. A household where a member never signs in: the laptop could be
#    anyone's among several unexplained devices -> no inferred link.
write("household-nonsigner", evenings([5, 6, 7, 8], "81.2.3.11",
    [("alice-phone", "alice", 0), ("alice-laptop", None, 2),
     ("bob-phone", None, 5), ("bob-laptop", None, 7)]))

# 4. Office behind one NAT address: 12 devices, 4 accounts -> crowded.
office = []
for d in [5, 6, 7]:
    for i in range(6):
        office.append(ev(d, f"10:{i*5:02d}", "page_view", f"desk-{i}", "81.2.3.12", f"worker-{i % 4}" if i < 4 else None))
        office.append(ev(d, f"10:{i*5+1:02d}", "page_view", f"laptop-{i}", "81.2.3.12"))
write("office-nat", office)

# 5. Carrier-grade NAT and private addresses never count.
write("cgnat", evenings([5, 6, 7], "100.64.3.4", [("p-phone", "pat", 0), ("p-laptop", None, 1)])
      + evenings([5, 6, 7], "192.168.1.20", [("p-phone", "pat", 10), ("p-laptop", None, 11)]))

# 6. A family tablet both parents sign in on: two sign-in links, and the
#    accounts stay separate.
write("shared-tablet", [
    ev(5, "19:00", "login", "family-tablet", "81.2.3.13", "mum"),
    ev(5, "19:30", "logout", "family-tablet", "81.2.3.13", "mum"),
    ev(5, "21:00", "login", "family-tablet", "81.2.3.13", "dad"),
    ev(6, "07:00", "page_view", "family-tablet", "81.2.3.13"),
])

# 7. IPv6: privacy addresses rotate inside one /64 -> one bucket.
v6 = []
for d in SIX:
    v6.append(ev(d, "21:00", "page_view", "v6-phone", f"2a02:10:20:31::a{d}", "vera"))
    v6.append(ev(d, "21:01", "page_view", "v6-laptop", f"2a02:10:20:31::b{d}"))
write("ipv6-prefix", v6)

# 8. Opt-out removes the inferred link and its evidence; opt-in lets new
#    evidence count from its ts on.
oo = evenings(SIX, "81.2.3.14", [("o-phone", "olga", 0), ("o-laptop", None, 1)])
oo.append(ev(11, "12:00", "opt_out", account="olga"))
oo += evenings([11, 12], "81.2.3.14", [("o-phone", "olga", 0), ("o-laptop", None, 1)])
oo.append(ev(13, "12:00", "opt_in", account="olga"))
oo += evenings([13, 14, 15], "81.2.3.14", [("o-phone", "olga", 0), ("o-laptop", None, 1)])
write("opt-out-opt-in", oo)

# 9. Erase: the account and a device disappear; an event from before the
#    erase arriving afterwards does not bring them back.
er = evenings(SIX, "81.2.3.15", [("e-phone", "erin", 0), ("e-laptop", None, 1)])
er.append(ev(10, "23:00", "erase", account="erin"))
er.append(ev(11, "09:00", "page_view", "other", "81.2.3.16", "zed"))
er.append(ev(10, "22:59", "page_view", "e-phone", "81.2.3.15", "erin"))  # late, before the erase
er.append(ev(11, "10:00", "page_view", "gone-device", "81.2.3.17", "zed"))
er.append(ev(11, "11:00", "erase", device="gone-device"))
write("erase", er)

# 10. Out-of-order within the lateness bound gives the household-single
#     result; an event beyond the bound is late (refreshes sign-in only).
hs = evenings(SIX, "81.2.3.10", [("alice-phone", "alice", 0), ("alice-laptop", None, 1)])
shuffled = []
for i in range(0, len(hs), 2):
    shuffled += [hs[i + 1], hs[i]]  # laptop (a minute later) arrives first
shuffled.append(ev(10, "23:00", "page_view", "late-phone", "81.2.3.20", "larry"))
shuffled.append(ev(10, "22:00", "page_view", "late-phone", "81.2.3.20", "larry"))  # 60 min behind: late
write("late-and-out-of-order", shuffled)

# 11. Bad lines: each becomes a dead letter with its own reason.
write("bad-lines", [ev(5, "08:00", "login", "ok-phone", "81.2.3.4", "okay")], [
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":"d1","ip":"81.2.3.4"',
    '[1,2,3]',
    '{"kind":"page_view","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"last tuesday","kind":"page_view","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"1970-01-01T00:00:00Z","kind":"page_view","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"2999-01-01T00:00:00Z","kind":"page_view","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":"undefined","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":"00000000-0000","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":"d1"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":"d1","ip":"81.2.3.999"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"login","device_id":"d1","ip":"81.2.3.4"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"opt_out"}',
    '{"ts":"2026-01-05T08:00:00Z","kind":"page_view","device_id":42,"ip":"81.2.3.4"}',
    'not json at all',
])

# 12. Two phones of two platforms at home: alice's iPhone app is signed in;
#     twenty seconds later, on six evenings, her iPhone's browser (a cookie
#     of its own) and her housemate bob's Android phone, never signed in,
#     come online. Both meet her use alike (two unexplained devices on the
#     address, so each day weighs exp(-1/6) / sqrt(2) = 0.60, over the
#     0.5 a day needs); the Android phone clashes with her only phone's
#     platform and is refused, her browser is linked.
IPHONE_APP = "IdlinkNews/5.12.0 (iPhone15,2; iOS 17.4.1)"
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
ANDROID_CHROME = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36")
two = []
for d in SIX:
    two.append(ev(d, "20:00", "app_open", "alice-iphone-app", "81.2.3.12", "alice", user_agent=IPHONE_APP))
    two.append(ev(d, "20:00:20", "page_view", "alice-iphone-safari", "81.2.3.12", user_agent=IPHONE_SAFARI))
    two.append(ev(d, "20:00:20", "page_view", "bob-android", "81.2.3.12", user_agent=ANDROID_CHROME))
write("household-two-platforms", two)
