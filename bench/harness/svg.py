"""Tiny SVG charts (standard library only): grouped bars and lines."""

from html import escape

COLORS = {
    "pubsub": "#d62728",
    "echo": "#7f7f7f",
    "echo128k": "#bcbd22",
    "ws": "#1f77b4",
    "socketio": "#9467bd",
    "nats": "#2ca02c",
    "centrifuge": "#ff7f0e",
    "sockudo": "#8c564b",
}
FALLBACK = ["#17becf", "#e377c2", "#8c564b", "#393b79"]

W, H = 720, 400
ML, MR, MT, MB = 80, 150, 50, 60


def color(name, i=0):
    return COLORS.get(name, FALLBACK[i % len(FALLBACK)])


def nice_max(v):
    if v <= 0:
        return 1
    import math

    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e3:
        return f"{v / 1e3:.3g}k"
    if v == int(v):
        return str(int(v))
    return f"{v:.3g}"


def _frame(title, ylabel, xlabel):
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="18" y="{MT + (H - MT - MB) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {MT + (H - MT - MB) / 2})">{escape(ylabel)}</text>',
        f'<text x="{ML + (W - ML - MR) / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>',
    ]
    return out


def _yaxis(out, ymax, log=False, ymin=None):
    import math

    ph = H - MT - MB
    if log:
        lo, hi = round(math.log10(ymin)), round(math.log10(ymax))
        ticks = max(hi - lo, 1)
    else:
        ticks = 5
    for i in range(ticks + 1):
        v = 10 ** (lo + i) if log else ymax * i / ticks
        y = MT + ph - ph * i / ticks
        out.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    out.append(f'<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{H - MB}" stroke="black"/>')
    out.append(f'<line x1="{ML}" y1="{H - MB}" x2="{W - MR}" y2="{H - MB}" stroke="black"/>')


def _legend(out, names):
    for i, n in enumerate(names):
        y = MT + 10 + 18 * i
        out.append(f'<rect x="{W - MR + 15}" y="{y - 9}" width="12" height="12" fill="{color(n, i)}"/>')
        out.append(f'<text x="{W - MR + 32}" y="{y + 1}">{escape(n)}</text>')


def bars(title, ylabel, xlabel, groups, series, values, labels=None, note=None):
    """groups: x categories; series: names; values[(group, series)] = number."""
    out = _frame(title, ylabel, xlabel)
    ymax = nice_max(max([v for v in values.values() if v is not None] + [1]))
    _yaxis(out, ymax)
    pw, ph = W - ML - MR, H - MT - MB
    gw = pw / max(len(groups), 1)
    bw = gw * 0.8 / max(len(series), 1)
    for gi, g in enumerate(groups):
        x0 = ML + gi * gw + gw * 0.1
        out.append(f'<text x="{ML + gi * gw + gw / 2:.1f}" y="{H - MB + 18}" text-anchor="middle">{escape(str(g))}</text>')
        for si, s in enumerate(series):
            v = values.get((g, s))
            if v is None:
                continue
            h = ph * v / ymax
            x = x0 + si * bw
            out.append(
                f'<rect x="{x:.1f}" y="{MT + ph - h:.1f}" width="{bw * 0.92:.1f}" height="{h:.1f}" fill="{color(s, si)}">'
                f"<title>{escape(s)}: {fmt(v)}</title></rect>"
            )
            lab = (labels or {}).get((g, s))
            if lab:
                out.append(
                    f'<text x="{x + bw * 0.46:.1f}" y="{MT + ph - h - 4:.1f}" text-anchor="middle" font-size="9">{escape(lab)}</text>'
                )
    _legend(out, series)
    if note:
        out.append(f'<text x="{ML}" y="{MT - 8}" font-size="10" fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def lines(title, ylabel, xlabel, series, log_y=False, note=None, xmax=None):
    """series: {name: [(x, y), ...]}"""
    import math

    out = _frame(title, ylabel, xlabel)
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        pts = [(0, 1)]
    xmax = xmax or nice_max(max(p[0] for p in pts))
    xmin = 0
    if log_y:
        ys = [p[1] for p in pts if p[1] > 0] or [1]
        ymin = 10 ** math.floor(math.log10(min(ys)))
        ymax = 10 ** math.ceil(math.log10(max(ys)))
        if ymax <= ymin:
            ymax = ymin * 10
    else:
        ymin, ymax = 0, nice_max(max(p[1] for p in pts))
    _yaxis(out, ymax, log_y, ymin)
    pw, ph = W - ML - MR, H - MT - MB
    for i in range(6):
        v = xmin + (xmax - xmin) * i / 5
        x = ML + pw * i / 5
        out.append(f'<text x="{x:.1f}" y="{H - MB + 18}" text-anchor="middle">{fmt(v)}</text>')

    def sx(x):
        return ML + pw * (x - xmin) / (xmax - xmin or 1)

    def sy(y):
        if log_y:
            y = max(y, ymin)
            return MT + ph - ph * (math.log10(y) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin))
        return MT + ph - ph * y / ymax

    names = list(series)
    for i, n in enumerate(names):
        s = sorted(p for p in series[n] if p[1] is not None)
        if not s:
            continue
        c = color(n, i)
        d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(s))
        out.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        if len(s) <= 40:
            for x, y in s:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"><title>{escape(n)}: {fmt(x)}, {fmt(y)}</title></circle>')
    _legend(out, names)
    if note:
        out.append(f'<text x="{ML}" y="{MT - 8}" font-size="10" fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)
