#!/usr/bin/env python3
"""Reads a mixed-LAN swarm run's flow counts (`p2p-bench swarm --class ...`
writes them as <name>.flows.csv: cumulative bytes per (to, from) pair,
sampled about every 0.1 s) and prints where the bytes went.

  flows.py rates   FLOWS [STEP]       per STEP s (0.5): each wired host's
                                      download rate, the seeder's upload
                                      and what of it went to the laptops
  flows.py deficit FLOWS [STEP]       per STEP s (0.5): the wired hosts'
                                      mean download rate, its sources, and
                                      the download time lost so far
                                      against a 100 Mbit/s link
  flows.py tail    FLOWS T0 T1 [STEP] per STEP s (0.2) from T0 to T1: each
                                      wired host's sources and their rates
                                      (~ marks a Wi-Fi source)

Rates are Mbit/s. FLOWS may be gzipped. The samples are about 0.1 s
apart, so a bin that holds one sample fewer than its neighbours reads a
fifth low: look at runs of bins, not one.
"""
import collections
import csv
import gzip
import sys


def load(path):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt') as f:
        rows = list(csv.DictReader(f))
    series = collections.defaultdict(list)
    for r in rows:
        if r['from'] == 'index' or r['to'] == 'index':
            continue
        series[(r['to'], r['from'])].append((float(r['t_s']), int(r['bytes'])))
    return series


def at(samples, t):
    """The cumulative bytes of one flow at time t."""
    v = 0
    for tt, b in samples:
        if tt > t:
            break
        v = b
    return v


def mbit(series, keep, t, step):
    """Mbit/s over [t, t + step) summed over the flows `keep` accepts."""
    return sum(at(s, t + step) - at(s, t) for k, s in series.items() if keep(k)) * 8 / step / 1e6


def host(name):
    return name.split('/')[0]


def end_of(series, limit):
    return min(max(t for s in series.values() for t, _ in s), limit)


def rates(series, step):
    nodes = sorted({k[0] for k in series} | {k[1] for k in series})
    print('Mbit/s per', step, 's: down(to) for each host; up(from) for seeder and wifi total')
    t = 0.0
    while t < end_of(series, 9):
        line = [f"{host(n)}↓{mbit(series, lambda k, n=n: k[0] == n, t, step):5.1f}"
                for n in nodes if 'wifi' not in n]
        su = mbit(series, lambda k: k[1] == 'seeder', t, step)
        s2w = mbit(series, lambda k: k[1] == 'seeder' and 'wifi' in k[0], t, step)
        wu = mbit(series, lambda k: 'wifi' in k[1] and 'wired' in k[0], t, step)
        wiredup = mbit(series, lambda k: 'wired' in k[1], t, step)
        print(f"{t:4.1f} seed↑{su:5.1f} (to wifi {s2w:4.1f}) wifi→wired {wu:4.1f} wired↑{wiredup:5.1f} |", ' '.join(line))
        t += step


def deficit(series, step):
    wired = sorted({k[0] for k in series if 'wired' in k[0]})
    n = len(wired)
    t, lost = 0.0, 0.0
    while t < end_of(series, 8):
        mean = sum(mbit(series, lambda k, w=w: k[0] == w, t, step) for w in wired) / n
        lost += (100 - mean) * step / 100
        from_wifi = mbit(series, lambda k: k[0] in wired and 'wifi' in k[1], t, step) / n
        from_seed = mbit(series, lambda k: k[0] in wired and k[1] == 'seeder', t, step) / n
        s2wifi = mbit(series, lambda k: 'wifi' in k[0] and k[1] == 'seeder', t, step)
        wired2wifi = mbit(series, lambda k: 'wifi' in k[0] and k[1] in wired, t, step)
        print(f"{t:4.1f} wired mean↓{mean:5.1f} (seed {from_seed:4.1f} wifi {from_wifi:4.1f}) "
              f"lost {lost:4.2f}s | seed→wifi {s2wifi:4.1f} wired→wifi {wired2wifi:5.1f}")
        t += step


def tail(series, t0, t1, step):
    wired = sorted({k[0] for k in series if 'wired' in k[0]})
    t = t0
    while t < t1:
        out = []
        for w in wired:
            parts = []
            for k, s in series.items():
                if k[0] != w:
                    continue
                d = (at(s, t + step) - at(s, t)) * 8 / step / 1e6
                if d > 0.5:
                    mark = '~' if 'wifi' in k[1] else ''
                    parts.append(f"{host(k[1]).replace('peer', 'p')}{mark}:{d:.0f}")
            out.append(host(w) + '<' + ','.join(parts))
        print(f"{t:4.1f}", ' | '.join(out))
        t += step


def main(argv):
    if len(argv) < 3 or argv[1] not in ('rates', 'deficit', 'tail'):
        sys.exit(__doc__)
    series = load(argv[2])
    if argv[1] == 'rates':
        rates(series, float(argv[3]) if len(argv) > 3 else 0.5)
    elif argv[1] == 'deficit':
        deficit(series, float(argv[3]) if len(argv) > 3 else 0.5)
    else:
        if len(argv) < 5:
            sys.exit(__doc__)
        tail(series, float(argv[3]), float(argv[4]), float(argv[5]) if len(argv) > 5 else 0.2)


if __name__ == '__main__':
    main(sys.argv)
