// sonde status page. Reads the daemon's API (same origin), follows /v1/watch as
// Server-Sent Events, polls every 2 s, reconnects after a restart. Every string from
// the daemon goes into the page through textContent, never innerHTML.
'use strict';

const POLL_MS = 2000;
const RTTS = 30;
const SVG_NS = 'http://www.w3.org/2000/svg';

const view = {
  statuses: [],
  rtts: {},
  unhealthyOnly: false,
  label: null,
  live: false,
  events: null,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function fmtUs(us) {
  if (us === null || us === undefined || us === 0) return '–';
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function fmtAge(ms) {
  if (!ms) return '–';
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const parts = [];
  for (const [unit, n] of [['d', 86400], ['h', 3600], ['m', 60]]) {
    if (s >= n) { parts.push(`${Math.floor(s / n)}${unit}`); s %= n; }
  }
  if (parts.length < 2) parts.push(`${s}s`);
  return parts.slice(0, 2).join(' ');
}

function fmtReason(r) {
  if (!r) return '';
  const extra = Object.entries(r).filter(([k]) => k !== 'reason').map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`);
  return extra.length ? `${r.reason} (${extra.join(', ')})` : r.reason;
}

function fmtTarget(t) {
  if (!t) return '';
  const host = t.addr && t.addr.includes(':') ? `[${t.addr}]` : t.addr;
  const shown = t.port ? `${host}:${t.port}` : `${host}`;
  return t.host && t.host !== t.addr ? `${t.host} (${shown})` : shown;
}

function setConn(live, why) {
  view.live = live;
  const c = document.getElementById('conn');
  c.textContent = live ? 'live' : `disconnected, reconnecting${why ? ` (${why})` : ''}`;
  c.className = `conn ${live ? 'conn-up' : 'conn-down'}`;
  c.dataset.live = live ? '1' : '0';
}

function matches(s) {
  if (view.unhealthyOnly && s.state !== 'unhealthy') return false;
  if (view.label) {
    const [k, v] = view.label;
    if (!s.labels || s.labels[k] !== v) return false;
  }
  return true;
}

function sparkline(values) {
  const w = 120, h = 24, pad = 2;
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', w);
  svg.setAttribute('height', h);
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  const list = values || [];
  const ok = list.filter((v) => v !== null);
  const max = ok.length ? Math.max(...ok) : 1;
  const step = list.length > 1 ? (w - 2 * pad) / (list.length - 1) : 0;
  const points = [];
  list.forEach((v, i) => {
    const x = pad + i * step;
    if (v === null) {
      const l = document.createElementNS(SVG_NS, 'line');
      l.setAttribute('class', 'fail');
      l.setAttribute('x1', x); l.setAttribute('x2', x);
      l.setAttribute('y1', pad); l.setAttribute('y2', h - pad);
      svg.append(l);
    } else {
      points.push(`${x.toFixed(1)},${(h - pad - (v / max) * (h - 2 * pad)).toFixed(1)}`);
    }
  });
  if (points.length) {
    const p = document.createElementNS(SVG_NS, 'polyline');
    p.setAttribute('points', points.join(' '));
    svg.append(p);
  }
  const title = document.createElementNS(SVG_NS, 'title');
  title.textContent = list.length
    ? `last ${list.length} results: ${ok.length} answered, max ${fmtUs(max)}`
    : 'no results yet';
  svg.append(title);
  return svg;
}

function row(s) {
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
  const lr = s.last_result;
  const last = lr
    ? `${fmtReason(lr.reason)}${lr.http_status ? ` · HTTP ${lr.http_status}` : ''} · ${lr.clock} clock`
    : 'no result yet';
  const lat = s.latency && (s.latency.rtt.count ? s.latency.rtt : s.latency.total);
  const since = el('td', { title: s.since_unix_ms ? new Date(s.since_unix_ms).toISOString() : '' }, fmtAge(s.since_unix_ms));
  since.dataset.since = s.since_unix_ms || 0;
  since.className = 'since';
  const tr = el('tr', { class: `row-${s.state}` },
    el('td', {}, el('span', { class: 'id' }, s.id), el('span', { class: 'labels' }, labels)),
    el('td', {}, s.kind),
    el('td', {}, fmtTarget(s.target)),
    el('td', {}, el('span', { class: `state state-${s.state}` }, s.state)),
    since,
    el('td', { class: 'last' }, last),
    el('td', { class: 'num' }, fmtUs(lat && lat.p50_us)),
    el('td', { class: 'num' }, fmtUs(lat && lat.p99_us)),
    el('td', {}, sparkline(view.rtts[s.id])),
  );
  tr.dataset.check = s.id;
  tr.dataset.state = s.state;
  return tr;
}

function render() {
  const body = document.querySelector('#checks tbody');
  const shown = view.statuses.filter(matches);
  body.replaceChildren(...shown.map(row));
  document.getElementById('empty').hidden = shown.length > 0;
  const count = (st) => view.statuses.filter((s) => s.state === st).length;
  document.getElementById('summary').textContent =
    `${view.statuses.length} checks: ${count('healthy')} healthy, ${count('unhealthy')} unhealthy, ` +
    `${count('unknown')} unknown; ${shown.length} shown`;
}

function renderInfo(info) {
  document.getElementById('daemon').textContent =
    `v${info.version} · ${info.checks} checks · ${info.clock} clock` +
    `${info.iface ? ` on ${info.iface}` : ''} · up ${fmtAge(Date.now() - info.uptime_secs * 1000)}`;
}

function bar(share) {
  // CSSOM, not a style attribute: the page's CSP allows no inline styles.
  const b = el('span', { class: 'bar' });
  b.style.width = `${Math.round(share * 100)}px`;
  return b;
}

function renderCluster(c) {
  const sec = document.getElementById('cluster');
  const title = document.getElementById('checks-title');
  if (!c || c.mode !== 'cluster') { sec.hidden = true; title.textContent = 'Checks'; return; }
  sec.hidden = false;
  title.textContent = 'Checks this node probes (its own opinion; the quorum verdict is in etcd)';
  const v = c.cluster;
  const stale = v.error ? ` · etcd unreadable, view from ${fmtAge(v.refreshed_unix_ms)} ago: ${v.error}` : '';
  document.getElementById('cluster-summary').textContent =
    `This node: ${v.node_id} · leader: ${v.leader === null ? 'none (no leader elected)' : `${v.leader} (term ${v.term})`}` +
    ` · ${v.nodes.length} live nodes · suspect: ${v.suspects.length ? v.suspects.join(', ') : 'none'}${stale}`;
  const body = document.querySelector('#nodes tbody');
  body.replaceChildren(...v.nodes.map((n) => {
    const pct = (n.share * 100).toFixed(1);
    const tr = el('tr', {},
      el('td', {}, n.id === v.node_id ? `${n.id} (this node)` : n.id),
      el('td', {}, n.leader ? 'leader' : 'follower'),
      el('td', { class: 'num' }, n.assigned),
      el('td', {}, bar(n.share), `${pct}%`),
      el('td', {}, n.suspect
        ? el('span', { class: 'badge badge-suspect' }, 'suspect: not counted')
        : el('span', { class: 'badge badge-counted' }, 'counted')),
      el('td', {}, `${fmtAge(n.registered_unix_ms)} ago`),
    );
    tr.dataset.node = n.id;
    tr.dataset.suspect = n.suspect ? '1' : '0';
    return tr;
  }));
}

async function refresh() {
  try {
    const [info, statuses, rtts, cluster] = await Promise.all([
      getJSON('/v1/info'), getJSON('/v1/status'), getJSON(`/v1/rtts?n=${RTTS}`), getJSON('/v1/cluster'),
    ]);
    view.statuses = statuses;
    view.rtts = rtts;
    renderInfo(info);
    renderCluster(cluster);
    render();
    if (!view.events) follow();
    else if (view.events.readyState === EventSource.OPEN) setConn(true);
  } catch (e) {
    setConn(false, e.message);
  }
}

function follow() {
  const es = new EventSource('/v1/watch');
  view.events = es;
  es.onopen = () => { setConn(true); refresh(); };
  es.onerror = () => {
    setConn(false, 'watch stream closed');
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. an HTTP error while the daemon restarts): start over.
      view.events = null;
      setTimeout(follow, POLL_MS);
    }
  };
  es.addEventListener('transition', (m) => {
    const t = JSON.parse(m.data);
    const s = view.statuses.find((x) => x.id === t.check);
    if (s) {
      s.state = t.to;
      s.since_unix_ms = t.at_unix_ms;
      render();
    }
    refresh();
  });
  for (const kind of ['check_added', 'check_removed', 'lagged']) es.addEventListener(kind, refresh);
}

function readFilters() {
  view.unhealthyOnly = document.getElementById('f-unhealthy').checked;
  const raw = document.getElementById('f-label').value.trim();
  const i = raw.indexOf('=');
  view.label = i > 0 ? [raw.slice(0, i), raw.slice(i + 1)] : null;
  const hash = new URLSearchParams();
  if (view.unhealthyOnly) hash.set('unhealthy', '1');
  if (raw) hash.set('label', raw);
  history.replaceState(null, '', hash.toString() ? `#${hash}` : location.pathname);
  render();
}

function start() {
  const h = new URLSearchParams(location.hash.slice(1));
  document.getElementById('f-unhealthy').checked = h.get('unhealthy') === '1';
  document.getElementById('f-label').value = h.get('label') || '';
  document.getElementById('filters').addEventListener('input', readFilters);
  document.getElementById('filters').addEventListener('submit', (e) => e.preventDefault());
  readFilters();
  setConn(false, 'starting');
  refresh();
  setInterval(refresh, POLL_MS);
  setInterval(() => {
    for (const td of document.querySelectorAll('td.since')) td.textContent = fmtAge(Number(td.dataset.since));
  }, 1000);
}

document.addEventListener('DOMContentLoaded', start);
