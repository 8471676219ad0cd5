"""`qkdtwin timeline LAB --out DIR`: the recorded events of a lab drawn like the paper's
Figure 4 -- one horizontal line per element/KM, a marker per step (request arrival,
authentication, configuration, QKD key available, relay hop, response, alarms) -- as a PNG
(matplotlib, Agg) and as a self-contained interactive HTML page (no external resources).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import sys
from pathlib import Path

from qkdtwin.errors import UserError
from qkdtwin.events import (
    CATEGORIES,
    Timeline,
    build_timeline,
    event_files,
    key_available_events,
    load_events,
)


def _session_offsets(tl: Timeline) -> dict[str | None, float]:
    """A small vertical offset per session, so sessions crossing one KM stay apart."""
    order = sorted(tl.sessions, key=lambda s: tl.sessions[s]["first"])
    steps = (0.0, 0.18, -0.18, 0.09, -0.09, 0.27, -0.27)
    out: dict[str | None, float] = {s: steps[i % len(steps)] for i, s in enumerate(order)}
    out[None] = 0.0
    return out


def render_png(tl: Timeline, path: Path, title: str = "", log_time: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = tl.lanes
    y = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}
    off = _session_offsets(tl)
    fig, ax = plt.subplots(figsize=(13, 1.4 + 0.5 * len(lanes)), dpi=110)
    end = max(tl.duration, 1e-3)
    for lane in lanes:
        ax.hlines(y[lane], 0, end * 1.02, color="#cccccc", lw=1.2, zorder=1)
    for cat in tl.categories():
        label, color, marker = CATEGORIES[cat]
        pts = [m for m in tl.markers if m.category == cat]
        ax.scatter([m.t for m in pts], [y[m.lane] + off.get(m.session_id, 0.0) for m in pts],
                   c=color, marker=marker, s=70 if marker != "." else 30, label=label,
                   zorder=3, edgecolors="white" if marker not in ("|", "x", ".") else None,
                   linewidths=0.6)
    ax.set_yticks([y[lane] for lane in lanes], lanes)
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    if log_time:
        ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=-end * 0.01)
    ax.set_xlabel("time since the first event (s)" + (", symlog scale" if log_time else ""))
    start = dt.datetime.fromtimestamp(tl.t0, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ax.set_title(title or f"events from {start}", fontsize=11, loc="left")
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    paths = [f"{s[:8]} {'-'.join(v['path'])}" for s, v in tl.sessions.items() if v.get("path")]
    if paths:
        fig.text(0.01, 0.005, "paths: " + "; ".join(paths[:6]), fontsize=8, color="#555555")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>__TITLE__</title>
<style>
 body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
 h1{font-size:17px;margin:0 0 4px} .sub{color:#666;margin-bottom:8px}
 #bar{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:6px 0}
 .chip{display:inline-flex;align-items:center;gap:4px;cursor:pointer;user-select:none;
  padding:1px 6px;border:1px solid #ddd;border-radius:10px}
 .chip.off{opacity:.35} .dot{width:10px;height:10px;border-radius:50%;display:inline-block}
 svg{border:1px solid #e5e5e5;background:#fff;cursor:grab} .lane{stroke:#ccc}
 .lbl{font-size:12px;text-anchor:end;dominant-baseline:middle}
 .tick{font-size:10px;fill:#666;text-anchor:middle} circle{cursor:pointer}
 circle.dim{opacity:.12}
 #tip{position:fixed;pointer-events:none;background:#fffff0;border:1px solid #aaa;padding:6px;
  font:11px monospace;white-space:pre;max-width:560px;display:none;z-index:9}
 table{border-collapse:collapse;margin-top:10px} td,th{border-bottom:1px solid #eee;
  padding:2px 8px;text-align:left;font-size:12px}
</style></head><body>
<h1>__TITLE__</h1>
<div class="sub" id="sub"></div>
<div id="bar"><label>session <select id="sess"><option value="">all</option></select></label>
<span id="legend"></span><button id="reset">reset zoom</button>
<span style="color:#888">wheel: zoom · drag: pan · hover: details</span></div>
<svg id="tl" width="1200" height="400"></svg>
<div id="tip"></div>
<table id="sessions"><thead><tr><th>session</th><th>API</th><th>applications</th>
<th>path</th><th>first (s)</th><th>last (s)</th><th>keys</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
const D=JSON.parse(document.getElementById('data').textContent);
const svg=document.getElementById('tl'),tip=document.getElementById('tip');
const NS='http://www.w3.org/2000/svg',L=110,R=20,T=20,LH=34;
const W=Math.max(900,window.innerWidth-40),H=T+LH*D.lanes.length+30;
svg.setAttribute('width',W);svg.setAttribute('height',H);
let x0=0,x1=Math.max(D.duration,0.001)*1.03,off={},hidden={},sess='';
const order=Object.keys(D.sessions).sort((a,b)=>D.sessions[a].first-D.sessions[b].first);
const steps=[0,6,-6,3,-3,9,-9];order.forEach((s,i)=>off[s]=steps[i%steps.length]);
document.getElementById('sub').textContent=D.markers.length+' events, '+D.lanes.length+
 ' elements, '+order.length+' sessions; t0 = '+new Date(D.t0*1000).toISOString();
const sel=document.getElementById('sess');
order.forEach(s=>{const o=document.createElement('option');o.value=s;
 const v=D.sessions[s];o.textContent=s.slice(0,8)+' '+(v.saes||[]).join('→')+
 (v.path?' via '+v.path.join('-'):'');sel.appendChild(o);});
sel.onchange=()=>{sess=sel.value;if(sess){const v=D.sessions[sess],
 m=Math.max((v.last-v.first)*0.08,0.002);x0=v.first-m;x1=v.last+m;}draw();};
const leg=document.getElementById('legend');const used=new Set(D.markers.map(m=>m.category));
Object.entries(D.categories).forEach(([c,v])=>{if(!used.has(c))return;
 const s=document.createElement('span');s.className='chip';s.dataset.cat=c;
 s.innerHTML='<span class="dot" style="background:'+v.color+'"></span>'+v.label;
 s.onclick=()=>{hidden[c]=!hidden[c];s.classList.toggle('off');draw();};leg.appendChild(s);});
const tb=document.querySelector('#sessions tbody');
order.forEach(s=>{const v=D.sessions[s],tr=document.createElement('tr');
 [s,v.api||'',(v.saes||[]).join(' → '),(v.path||[]).join(' - '),v.first.toFixed(3),
  v.last.toFixed(3),v.keys].forEach(t=>{const td=document.createElement('td');
  td.textContent=t;tr.appendChild(td);});tb.appendChild(tr);});
const X=t=>L+(t-x0)/(x1-x0)*(W-L-R);
function el(n,a,p){const e=document.createElementNS(NS,n);for(const k in a)e.setAttribute(k,a[k]);
 (p||svg).appendChild(e);return e;}
function draw(){svg.innerHTML='';
 const span=x1-x0,raw=span/8,p=Math.pow(10,Math.floor(Math.log10(raw))),
  st=[1,2,5,10].map(m=>m*p).find(v=>v>=raw);
 for(let t=Math.ceil(x0/st)*st;t<=x1;t+=st){el('line',{x1:X(t),x2:X(t),y1:T-8,y2:H-22,
  stroke:'#f0f0f0'});const tx=el('text',{x:X(t),y:H-8,class:'tick'});
  tx.textContent=(+t.toPrecision(6))+' s';}
 D.lanes.forEach((l,i)=>{const y=T+LH*i+LH/2;el('line',{x1:L,x2:W-R,y1:y,y2:y,class:'lane'});
  const tx=el('text',{x:L-8,y:y,class:'lbl'});tx.textContent=l;});
 D.markers.forEach(m=>{if(hidden[m.category]||m.t<x0||m.t>x1)return;
  const y=T+LH*D.lanes.indexOf(m.lane)+LH/2+(off[m.session_id]||0);
  const c=el('circle',{cx:X(m.t),cy:y,r:5,fill:D.categories[m.category].color,
   stroke:'#fff','stroke-width':1});
  if(sess&&m.session_id&&m.session_id!==sess)c.classList.add('dim');
  c.addEventListener('mousemove',ev=>{tip.style.display='block';
   tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';
   tip.textContent='t = '+m.t.toFixed(4)+' s  '+m.lane+'  ['+
    D.categories[m.category].label+']\\n'+m.label+'\\n\\n'+JSON.stringify(m.event,null,1);});
  c.addEventListener('mouseleave',()=>tip.style.display='none');});}
svg.addEventListener('wheel',ev=>{ev.preventDefault();const r=svg.getBoundingClientRect();
 const t=x0+(ev.clientX-r.left-L)/(W-L-R)*(x1-x0),k=ev.deltaY>0?1.25:0.8;
 x0=t-(t-x0)*k;x1=t+(x1-t)*k;draw();},{passive:false});
let drag=null;svg.addEventListener('mousedown',ev=>{drag={x:ev.clientX,a:x0,b:x1};});
window.addEventListener('mouseup',()=>drag=null);
window.addEventListener('mousemove',ev=>{if(!drag)return;
 const d=(ev.clientX-drag.x)/(W-L-R)*(drag.b-drag.a);x0=drag.a-d;x1=drag.b-d;draw();});
document.getElementById('reset').onclick=()=>{x0=0;x1=Math.max(D.duration,0.001)*1.03;draw();};
draw();})();
</script></body></html>
"""


def render_html(tl: Timeline, path: Path, title: str = "") -> Path:
    data = json.dumps(tl.as_dict(), separators=(",", ":"), default=str)
    data = data.replace("</", "<\\/")  # never close the script element early
    page = _HTML.replace("__TITLE__", html.escape(title or "qkdtwin event timeline"))
    page = page.replace("__DATA__", data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def render_markdown(tl: Timeline, path: Path, title: str = "") -> Path:
    """The events as a message-sequence table (Markdown): one row per event, times in ms
    from the first one, the element that published it, its kind and details. This is how
    docs/architecture.md shows a relayed session as it actually happens."""
    rows = [f"# {title}" if title else "", "",
            "| t (ms) | element | event | details |", "|---:|---|---|---|"]
    for m in sorted(tl.markers, key=lambda m: m.t):
        details = m.label[len(m.kind):].strip() if m.label.startswith(m.kind) else m.label
        details = details.replace("|", "\\|")
        rows.append(f"| {m.t * 1000:.0f} | {m.lane} | `{m.kind}` | {details} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows).lstrip() + "\n")
    return path


def recording_files(events_path: Path, all_runs: bool = False) -> tuple[list[Path],
                                                                          list[Path]]:
    """(event files, telemetry files) of a recording path. A lab's events dir keeps the files
    of every deploy (one per recorder start, named by UTC start time): by default only the
    newest run, and the telemetry recorded since it began."""
    files = event_files(events_path)
    tdir = events_path / "telemetry" if events_path.is_dir() else None
    tel = sorted(tdir.glob("*.jsonl")) if tdir is not None and tdir.is_dir() else []
    if events_path.is_dir() and not all_runs and files:
        newest = files[-1]
        files = [newest]
        tel = [t for t in tel if t.name >= newest.name]
    return files, tel


def timeline_for(events_path: Path, *, sessions: list[str] | None = None,
                 since: float | None = None, until: float | None = None,
                 last: float | None = None, telemetry: bool = True,
                 elements: list[str] | None = None, all_runs: bool = False) -> Timeline:
    """Load a recording (file or events dir) and build its timeline."""
    files, tel_files = recording_files(events_path, all_runs)
    events = [e for f in files for e in load_events(f)]
    if telemetry and tel_files:
        tel = [e for f in tel_files for e in load_events(f, channels=("telemetry",))]
        events += key_available_events(tel)
    events.sort(key=lambda e: e.ts)
    if not events:
        raise UserError(f"no events recorded in {events_path}")
    if last is not None:
        since = max(since or 0.0, events[-1].ts - last)
    return build_timeline(events, sessions=sessions, since=since, until=until,
                          elements=elements)


def _elements(values: list[str] | None) -> list[str] | None:
    """``--element km0,km1 --element admission`` -> the lines to keep."""
    out = [e.strip() for v in values or [] for e in v.split(",") if e.strip()]
    return out or None


def cmd_timeline(args: argparse.Namespace) -> int:
    if args.events:
        events_path = Path(args.events)
        name = args.lab if args.lab not in (None, "-") else events_path.stem
    else:
        if args.lab in (None, "-"):
            raise UserError("name a LAB or give --events PATH")
        from qkdtwin.topology import load_lab

        lab = load_lab(args.lab)
        events_path = lab.lab_dir / "events"
        name = lab.name
        if not events_path.is_dir():
            raise UserError(f"lab {lab.name} has no recorded events ({events_path} does not "
                            "exist): deploy it with `qkdtwin deploy` (the recorder starts with "
                            "the lab) or run `qkdtwin record`")
    event_files(events_path)  # a clear error for a wrong path
    tl = timeline_for(events_path, sessions=args.session or None, since=args.since,
                      until=args.until, last=args.last, telemetry=not args.no_telemetry,
                      elements=_elements(args.element), all_runs=args.all_runs)
    out = Path(args.out)
    title = args.title or f"qkdtwin {name}: event timeline"
    png = render_png(tl, out / "timeline.png", title, log_time=args.log_time)
    page = render_html(tl, out / "timeline.html", title)
    table = render_markdown(tl, out / "timeline.md", title)
    counts: dict[str, int] = {}
    for m in tl.markers:
        counts[m.category] = counts.get(m.category, 0) + 1
    print(f"{len(tl.markers)} events on {len(tl.lanes)} lines over {tl.duration:.2f} s, "
          f"{len(tl.sessions)} sessions: "
          + ", ".join(f"{CATEGORIES[c][0]} {counts[c]}" for c in tl.categories()))
    for sid, s in tl.sessions.items():
        if s.get("path"):
            print(f"  session {sid[:8]} {'→'.join(x or '?' for x in s.get('saes') or [])} "
                  f"path {'-'.join(s['path'])} keys {s['keys']}")
    print(f"wrote {png}\nwrote {page}\nwrote {table}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("timeline", help="draw a lab's recorded events (PNG + HTML)")
    p.add_argument("lab", metavar="LAB", help="lab name or labs/<lab>.clab.yml ('-' with "
                   "--events)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="writes DIR/timeline.png, DIR/timeline.html and DIR/timeline.md "
                        "(the message sequence as a table)")
    p.add_argument("--events", metavar="PATH",
                   help="a recording file or directory (default: labs/clab-<lab>/events/, "
                        "its newest run)")
    p.add_argument("--all-runs", action="store_true",
                   help="every recording file of the events dir (default: the newest run)")
    p.add_argument("--session", action="append", metavar="ID",
                   help="only this session (repeatable); alarms stay")
    p.add_argument("--element", action="append", metavar="NAMES",
                   help="only these lines (comma list, repeatable), e.g. km0,km1,km2")
    p.add_argument("--since", type=float, metavar="EPOCH", help="only events from this time")
    p.add_argument("--until", type=float, metavar="EPOCH", help="only events up to this time")
    p.add_argument("--last", type=float, metavar="S", help="only the last S seconds")
    p.add_argument("--no-telemetry", action="store_true",
                   help="no 'QKD key available' markers derived from recorded telemetry")
    p.add_argument("--log-time", action="store_true", help="symlog time axis in the PNG")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=cmd_timeline)


if __name__ == "__main__":
    from qkdtwin.cli import main

    sys.exit(main(["timeline", *sys.argv[1:]]))
