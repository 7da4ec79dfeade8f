/* hotpath live page: polls api/state and redraws. Charts with uPlot (vendored). */
(function () {
  "use strict";

  var LAYER_COLOURS = {
    connect: "#d62728", pool_wait: "#ff7f0e", db: "#1f77b4", redis: "#9467bd",
    http: "#2ca02c", blocked: "#8c564b", other: "#b8bec7"
  };
  var LINE_COLOURS = ["#d9480f", "#1c64b5", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285"];
  var QUERY_KINDS = ["n_plus_one", "slow_query", "duplicate", "unbounded_result", "unused_eager_load"];
  var TOP_SERIES = 5;

  // A token given as ?token= is kept for this tab only and taken out of the address bar.
  var token = null;
  (function () {
    var params = new URLSearchParams(location.search);
    if (params.has("token")) {
      token = params.get("token");
      sessionStorage.setItem("hotpath-token", token);
      params.delete("token");
      var rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    } else {
      token = sessionStorage.getItem("hotpath-token");
    }
  })();

  var charts = {};
  var picked = null;       // endpoint shown in the layers-over-time chart
  var last = null;         // last payload
  var lastOk = 0;

  function $(id) { return document.getElementById(id); }
  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function ms(value) {
    if (value == null || isNaN(value)) return "–";
    if (value >= 10000) return (value / 1000).toFixed(1) + " s";
    if (value >= 100) return Math.round(value).toLocaleString() + " ms";
    if (value >= 10) return value.toFixed(1) + " ms";
    return value.toFixed(2) + " ms";
  }
  function total(value) {
    if (value >= 3600000) return (value / 3600000).toFixed(1) + " h";
    if (value >= 60000) return (value / 60000).toFixed(1) + " min";
    if (value >= 1000) return (value / 1000).toFixed(1) + " s";
    return Math.round(value) + " ms";
  }
  function count(value) { return value == null ? "–" : Number(value).toLocaleString(); }
  function pct(value) { return value == null ? "–" : (100 * value).toFixed(value >= 0.995 || value < 0.1 ? 1 : 0) + "%"; }
  function chip(cls, text) { return '<span class="chip ' + cls + '">' + esc(text) + "</span>"; }
  function shortName(name, max) { return name.length > max ? name.slice(0, max - 1) + "…" : name; }

  // ---- data helpers ---------------------------------------------------------------------

  function endpoints(state) {
    var list = ((state.report || {}).endpoints || []).slice();
    list.sort(function (a, b) { return (b.total_ms || 0) - (a.total_ms || 0); });
    return list;
  }
  function layerNames(list) {
    var names = [];
    list.forEach(function (e) {
      Object.keys(e.breakdown_ms || {}).forEach(function (l) { if (names.indexOf(l) < 0) names.push(l); });
    });
    var order = Object.keys(LAYER_COLOURS);
    names.sort(function (a, b) { return order.indexOf(a) - order.indexOf(b); });
    return names;
  }
  function budgetClass(e) {
    if (!e.budget_ms) return "";
    if (e.p95_ms <= e.budget_ms) return "p-good";
    return e.p95_ms <= 2 * e.budget_ms ? "p-warn" : "p-bad";
  }
  function allFixes(list) {
    var out = [];
    list.forEach(function (e) { (e.fixes || []).forEach(function (f) { out.push(f); }); });
    return out;
  }

  // ---- overview checks ------------------------------------------------------------------

  function check(title, cls, value, detail, anchor) {
    return '<a class="check ' + cls + '" href="#' + anchor + '"><div class="t">' + esc(title) +
      '</div><div class="v">' + esc(value) + '</div><div class="d">' + esc(detail || "") + "</div></a>";
  }

  function renderChecks(state, list) {
    var html = [];
    var over = list.filter(function (e) { return e.budget_ms && e.p95_ms > e.budget_ms; });
    var worst = over.some(function (e) { return e.p95_ms > 2 * e.budget_ms; });
    html.push(list.length === 0
      ? check("Endpoints", "idle", "No traffic yet", "waiting for requests", "endpoints")
      : check("Endpoints", over.length ? (worst ? "bad" : "warn") : "good",
          over.length ? over.length + " of " + list.length + " over budget" : "All " + list.length + " within budget",
          over.length ? "slowest p95 " + ms(Math.max.apply(null, over.map(function (e) { return e.p95_ms; }))) : "p95 under each budget",
          "endpoints"));
    var fixes = allFixes(list);
    function kindCheck(title, kinds, anchor, none) {
      var found = fixes.filter(function (f) { return kinds.indexOf(f.kind) >= 0; });
      if (!found.length) return check(title, list.length ? "good" : "idle", "None", none, anchor);
      var saving = found.reduce(function (s, f) { return s + f.saving_ms; }, 0);
      var big = found.some(function (f) { return f.share >= 0.25; });
      return check(title, big ? "bad" : "warn", found.length + " found", "would save " + total(saving) + " over the run", anchor);
    }
    html.push(kindCheck("N+1 queries", ["n_plus_one", "n_plus_one_http"], "queries", "no query or call repeated per row"));
    html.push(kindCheck("Slow queries", ["slow_query", "unbounded_result"], "queries", "every query under its threshold"));
    var io = ["sequential_io", "blocking_call", "slow_dependency", "no_timeout", "connection_setup", "pool_wait", "cache_miss", "duplicate", "unused_eager_load"];
    html.push(kindCheck("Other findings", io, "fixes", "no blocking call, sequential I/O or slow dependency"));

    var pools = state.pools || [];
    if (!pools.length) html.push(check("Connection pool", "idle", "Not metered", "no instrumented pool in this run", "pool"));
    else {
      var waiting = pools.reduce(function (s, p) { return s + (p.waiting || 0); }, 0);
      var timeouts = pools.reduce(function (s, p) { return s + (p.timeouts || 0); }, 0);
      var p99 = Math.max.apply(null, pools.map(function (p) { return p.acquire_wait ? p.acquire_wait.p99 : 0; }));
      var cls = waiting || timeouts ? "bad" : p99 > 50 ? "warn" : "good";
      html.push(check("Connection pool", cls, waiting ? waiting + " waiting" : timeouts ? timeouts + " timeouts" : cls === "warn" ? "Slow acquires" : "Healthy",
        "acquire wait p99 " + ms(p99) + " · " + pools.length + " pool" + (pools.length > 1 ? "s" : ""), "pool"));
    }
    var caches = state.caches || [];
    if (!caches.length) html.push(check("Cache", "idle", "No cache", "no hotpath.cache in this run", "cache"));
    else {
      var hits = 0, lookups = 0;
      caches.forEach(function (c) { hits += (c.l1_hits || 0) + (c.l2_hits || 0); lookups += (c.l1_hits || 0) + (c.l2_hits || 0) + (c.misses || 0); });
      var ratio = lookups ? hits / lookups : 0;
      html.push(check("Cache", !lookups ? "idle" : ratio >= 0.8 ? "good" : ratio >= 0.5 ? "warn" : "bad",
        lookups ? pct(ratio) + " hits" : "No lookups", count(lookups) + " lookups · " + caches.length + " cache" + (caches.length > 1 ? "s" : ""), "cache"));
    }
    var sets = state.routing || [];
    if (!sets.length) html.push(check("Replicas", "idle", "Not routed", "no replica set in this run", "replicas"));
    else {
      var nodes = [];
      sets.forEach(function (s) { (s.nodes || []).forEach(function (n) { nodes.push(n); }); });
      var down = nodes.filter(function (n) { return !n.healthy; }).length;
      var lag = Math.max.apply(null, nodes.map(function (n) { return n.lag_s || 0; }).concat([0]));
      html.push(check("Replicas", down ? "bad" : lag > 1 ? "warn" : "good", down ? down + " ejected" : "All in use",
        "max lag " + lag.toFixed(2) + " s · " + nodes.length + " nodes", "replicas"));
    }
    var breakers = state.breakers || [];
    if (!breakers.length) html.push(check("Circuit breakers", "idle", "None", "no CircuitBreaker in this run", "breakers"));
    else {
      var open = breakers.filter(function (b) { return b.state === "open"; }).length;
      var half = breakers.filter(function (b) { return b.state === "half_open"; }).length;
      html.push(check("Circuit breakers", open ? "bad" : half ? "warn" : "good", open ? open + " open" : half ? half + " half open" : "All closed",
        breakers.length + " breaker" + (breakers.length > 1 ? "s" : ""), "breakers"));
    }
    var doctor = state.doctor;
    if (!doctor) html.push(check("Database", "idle", "Not checked", "hotpath run --db URL adds doctor's checks", "doctor"));
    else {
      var critical = doctor.filter(function (f) { return f.severity === "critical"; }).length;
      var warning = doctor.filter(function (f) { return f.severity === "warning"; }).length;
      html.push(check("Database", critical ? "bad" : warning ? "warn" : "good",
        critical ? critical + " critical" : warning ? warning + " warning" + (warning > 1 ? "s" : "") : "No problems",
        doctor.length + " finding" + (doctor.length === 1 ? "" : "s"), "doctor"));
    }
    var missing = state.uninstrumented || [];
    html.push(check("Instrumentation", missing.length ? "warn" : "good", missing.length ? missing.length + " not instrumented" : "Complete",
      missing.length ? "some of the app is not measured" : "everything found is measured", "uninstrumented"));
    $("checks").innerHTML = html.join("");
  }

  // ---- charts ---------------------------------------------------------------------------

  function width(el) { return Math.max(240, el.clientWidth); }

  // A tooltip for charts whose series are cumulative (stacked): rows(idx) gives its lines.
  function tooltip(rows) {
    var tip = $("tip");
    return {
      hooks: {
        setCursor: [function (u) {
          var idx = u.cursor.idx;
          if (idx == null || u.cursor.left < 0) { tip.hidden = true; return; }
          var html = rows(idx);
          if (!html) { tip.hidden = true; return; }
          tip.innerHTML = html;
          tip.hidden = false;
          var rect = u.over.getBoundingClientRect();
          var x = rect.left + u.cursor.left + 14, y = rect.top + u.cursor.top + 14;
          if (x + tip.offsetWidth > window.innerWidth - 8) x = rect.left + u.cursor.left - tip.offsetWidth - 14;
          if (y + tip.offsetHeight > window.innerHeight - 8) y = window.innerHeight - tip.offsetHeight - 8;
          tip.style.left = x + "px"; tip.style.top = y + "px";
        }]
      }
    };
  }

  function layerRows(title, values, layers) {
    var sum = 0;
    var body = layers.map(function (l, i) {
      sum += values[i] || 0;
      return '<tr><td><i style="background:' + LAYER_COLOURS[l] + '"></i>' + esc(l) + '</td><td class="num">' + ms(values[i]) + "</td></tr>";
    }).reverse().join("");
    return "<b>" + esc(title) + "</b><table>" + body + '<tr><td>total</td><td class="num">' + ms(sum) + "</td></tr></table>";
  }

  // Stacked series as uPlot draws them: each is the sum of its layer and those below it,
  // drawn largest first so the smaller ones paint over the bottom of it.
  function stack(perLayer) {
    var out = [], running = null;
    perLayer.forEach(function (values) {
      running = values.map(function (v, i) {
        if (v == null) return null;
        return (running && running[i] != null ? running[i] : 0) + v;
      });
      out.push(running);
    });
    return out;
  }

  function chartFor(key, el, signature, make) {
    var chart = charts[key];
    if (chart && chart._signature === signature) return chart;
    if (chart) chart.destroy();
    el.innerHTML = "";
    chart = make();
    chart._signature = signature;
    charts[key] = chart;
    return chart;
  }

  function renderLayerBars(list) {
    var el = $("chart-layers");
    var top = list.slice(0, 14);
    var layers = layerNames(top);
    $("layer-legend").innerHTML = layers.map(function (l) {
      return '<span><i style="background:' + LAYER_COLOURS[l] + '"></i>' + esc(l) + "</span>";
    }).join("");
    if (!top.length) { if (charts.layers) { charts.layers.destroy(); delete charts.layers; } el.innerHTML = '<p class="empty">No request yet.</p>'; return; }
    var names = top.map(function (e) { return e.name; });
    var perLayer = layers.map(function (l) { return top.map(function (e) { return (e.breakdown_ms || {})[l] || 0; }); });
    var stacked = stack(perLayer);
    var x = top.map(function (_, i) { return i; });
    var data = [x].concat(stacked.slice().reverse());
    var height = Math.max(150, 30 * top.length + 44);
    var chart = chartFor("layers", el, names.join("|") + "#" + layers.join(","), function () {
      var bars = uPlot.paths.bars({ size: [0.62, 26], align: 0 });
      var series = [{}].concat(layers.slice().reverse().map(function (l) {
        return { label: l, fill: LAYER_COLOURS[l], stroke: LAYER_COLOURS[l], width: 0, paths: bars, points: { show: false } };
      }));
      return new uPlot({
        width: width(el), height: height,
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { show: false }, y: false },
        scales: { x: { time: false, ori: 1, dir: -1, range: function () { return [-0.5, names.length - 0.5]; } },
                  y: { ori: 0, dir: 1, range: function (u, min, max) { return [0, max > 0 ? max * 1.05 : 1]; } } },
        axes: [
          { side: 3, scale: "x", size: 250, gap: 6, grid: { show: false }, ticks: { show: false },
            splits: function () { return names.map(function (_, i) { return i; }); },
            values: function (u, splits) { return splits.map(function (i) { return shortName(names[i] || "", 34); }); },
            font: "12px " + getComputedStyle(document.body).fontFamily },
          { side: 0, scale: "y", size: 30, space: 70, grid: { stroke: "#eef0f3" }, ticks: { show: false },
            values: function (u, splits) { return splits.map(function (v) { return v + " ms"; }); } }
        ],
        series: series,
        plugins: [tooltip(function (idx) {
          var current = charts.layers._endpoints;
          if (!current || !current[idx]) return "";
          var e = current[idx];
          return layerRows(e.name, layers.map(function (l) { return (e.breakdown_ms || {})[l] || 0; }), layers);
        })]
      }, data, el);
    });
    chart._endpoints = top;
    chart.setData(data);
  }

  function timeSeries(key, el, labels, columns, times, unit) {
    if (times.length < 1 || !labels.length) {
      if (charts[key]) { charts[key].destroy(); delete charts[key]; }
      el.innerHTML = '<p class="empty">Waiting for a second sample.</p>';
      return;
    }
    var data = [times].concat(columns);
    var chart = chartFor(key, el, labels.join("|"), function () {
      return new uPlot({
        width: width(el), height: 210,
        cursor: { drag: { x: true, y: false } },
        scales: { y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } } },
        axes: [{ grid: { stroke: "#eef0f3" } },
               { size: 70, grid: { stroke: "#eef0f3" }, values: function (u, splits) { return splits.map(function (v) { return v + unit; }); } }],
        series: [{}].concat(labels.map(function (label, i) {
          return { label: shortName(label, 40), stroke: LINE_COLOURS[i % LINE_COLOURS.length], width: 2, spanGaps: false, points: { show: false },
                   value: function (u, v) { return v == null ? "–" : v.toFixed(v >= 100 ? 0 : 1) + unit; } };
        }))
      }, data, el);
    });
    chart.setData(data);
  }

  function renderHistory(payload, list) {
    var samples = payload.history || [];
    var times = samples.map(function (s) { return s.t; });
    var top = list.slice(0, TOP_SERIES).map(function (e) { return e.name; });
    var p95 = top.map(function (name) {
      return samples.map(function (s) { var p = s.endpoints[name]; return p ? p[3] : null; });
    });
    timeSeries("p95", $("chart-p95"), top, p95, times, " ms");
    var rps = top.map(function (name) {
      return samples.map(function (s, i) {
        if (i === 0) return null;
        var now = s.endpoints[name], before = samples[i - 1].endpoints[name];
        var dt = s.t - samples[i - 1].t;
        if (!now || dt <= 0) return null;
        return (now[0] - (before ? before[0] : 0)) / dt;
      });
    });
    timeSeries("rps", $("chart-rps"), top, rps, times.length > 1 ? times : [], "/s");
    renderArea(samples, list);
  }

  function renderArea(samples, list) {
    var pick = $("endpoint-pick");
    var names = list.map(function (e) { return e.name; });
    if (picked == null || names.indexOf(picked) < 0) picked = names[0] || null;
    var options = names.map(function (n) { return '<option' + (n === picked ? " selected" : "") + ">" + esc(n) + "</option>"; }).join("");
    if (pick.innerHTML !== options) pick.innerHTML = options;
    var el = $("chart-area");
    var endpoint = list.filter(function (e) { return e.name === picked; })[0];
    if (!endpoint || samples.length < 2) {
      if (charts.area) { charts.area.destroy(); delete charts.area; }
      el.innerHTML = '<p class="empty">' + (endpoint ? "Waiting for a second sample." : "No request yet.") + "</p>";
      return;
    }
    var layers = layerNames([endpoint]);
    // mean per layer over each interval: (mean × count now − mean × count before) / new requests
    var perLayer = layers.map(function (l) {
      return samples.map(function (s, i) {
        if (i === 0) return null;
        var now = s.endpoints[picked], before = samples[i - 1].endpoints[picked];
        if (!now) return null;
        var n0 = before ? before[0] : 0, n = now[0] - n0;
        if (n <= 0) return null;
        var t0 = before ? (before[5][l] || 0) * n0 : 0;
        return Math.max(0, ((now[5][l] || 0) * now[0] - t0) / n);
      });
    });
    var times = samples.map(function (s) { return s.t; });
    var data = [times].concat(stack(perLayer).reverse());
    var chart = chartFor("area", el, picked + "#" + layers.join(","), function () {
      return new uPlot({
        width: width(el), height: 220,
        legend: { show: false },
        cursor: { drag: { x: true, y: false }, points: { show: false } },
        scales: { y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } } },
        axes: [{ grid: { stroke: "#eef0f3" } },
               { size: 70, grid: { stroke: "#eef0f3" }, values: function (u, splits) { return splits.map(function (v) { return v + " ms"; }); } }],
        series: [{}].concat(layers.slice().reverse().map(function (l) {
          return { label: l, stroke: LAYER_COLOURS[l], fill: LAYER_COLOURS[l] + "d0", width: 1, points: { show: false } };
        })),
        plugins: [tooltip(function (idx) {
          var values = charts.area._perLayer.map(function (col) { return col[idx]; });
          if (values.every(function (v) { return v == null; })) return "";
          return layerRows(new Date(times[idx] * 1000).toLocaleTimeString(), values, layers);
        })]
      }, data, el);
    });
    chart._perLayer = perLayer;
    chart.setData(data);
  }

  // ---- tables and lists -----------------------------------------------------------------

  function topLayers(e) {
    var sum = 0, parts = [];
    Object.keys(e.breakdown_ms || {}).forEach(function (l) { sum += e.breakdown_ms[l]; parts.push([l, e.breakdown_ms[l]]); });
    parts.sort(function (a, b) { return b[1] - a[1]; });
    return parts.filter(function (p) { return sum > 0 && p[1] / sum >= 0.05; }).slice(0, 3).map(function (p) {
      return '<span><i style="background:' + LAYER_COLOURS[p[0]] + '"></i>' + esc(p[0]) + " " + Math.round(100 * p[1] / sum) + "%</span>";
    }).join("");
  }

  function renderEndpoints(list) {
    $("endpoints-empty").hidden = list.length > 0;
    $("endpoint-table").querySelector("tbody").innerHTML = list.map(function (e) {
      var bottleneck = e.bottleneck && e.bottleneck !== "none" ? '<span class="kind">' + esc(e.bottleneck) + "</span>" : '<span class="sub">none</span>';
      return '<tr data-name="' + esc(e.name) + '"' + (e.name === picked ? ' class="picked"' : "") + '>' +
        '<td class="name">' + esc(e.name) + "</td>" +
        '<td class="num">' + count(e.count) + "</td>" +
        '<td class="num">' + total(e.total_ms || 0) + "</td>" +
        '<td class="num">' + ms(e.p50_ms) + "</td>" +
        '<td class="num ' + budgetClass(e) + '" title="budget ' + ms(e.budget_ms) + '">' + ms(e.p95_ms) + "</td>" +
        '<td class="num">' + ms(e.p99_ms) + "</td>" +
        '<td class="num">' + count(e.queries_p50) + ' <span class="sub">/ ' + count(e.queries_max) + "</span></td>" +
        '<td><div class="layers">' + topLayers(e) + "</div></td>" +
        "<td>" + bottleneck + "</td></tr>";
    }).join("");
  }

  function evidence(ev) {
    var keys = Object.keys(ev || {}).filter(function (k) { return k !== "plan_flags"; });
    if (!keys.length) return "";
    return "<details><summary>evidence</summary><dl class=\"ev\">" + keys.map(function (k) {
      var v = ev[k];
      return "<dt>" + esc(k) + "</dt><dd>" + esc(typeof v === "object" ? JSON.stringify(v) : v) + "</dd>";
    }).join("") + "</dl></details>";
  }

  function paste(text) {
    return '<div class="paste"><pre>' + esc(text) + '</pre><button type="button" data-copy>copy</button></div>';
  }

  function renderFixes(state) {
    var fixes = ((state.report || {}).top_fixes || []).slice(0, 25);
    $("fixes-empty").hidden = fixes.length > 0;
    $("fix-list").innerHTML = fixes.map(function (f, i) {
      var share = Math.max(0, Math.min(1, f.share || 0));
      return '<li class="fix' + (share >= 0.25 ? " big" : "") + '"><div class="rank">' + (i + 1) + '</div><div class="body">' +
        '<div class="head"><span class="kind">' + esc(f.kind) + '</span><span class="ep">' + esc(f.endpoint) + "</span>" +
        '<span class="save">saves ~' + total(f.saving_ms) + " <small>" + pct(share) + " of its time · " + count(f.scopes) + " requests</small></span></div>" +
        '<div class="msg">' + esc(f.message) + "</div>" +
        (f.call_site ? '<div class="site">at <code>' + esc(f.call_site) + "</code></div>" : "") +
        (f.change ? paste(f.change) : "") +
        (f.sql ? '<pre class="sql">' + esc(f.sql) + "</pre>" : "") +
        evidence(f.evidence) +
        '<div class="share"><div style="width:' + (100 * share).toFixed(1) + '%"></div></div>' +
        "</div></li>";
    }).join("");
  }

  function flagList(flags) {
    if (!flags || !flags.length) return "";
    return '<ul class="flags">' + flags.map(function (fl) {
      var where = fl.table ? " on " + fl.table + (fl.columns && fl.columns.length ? " (" + fl.columns.join(", ") + ")" : "") : "";
      return "<li>" + chip("sev-" + esc(fl.severity), fl.severity) + '<span class="kind">' + esc(fl.kind) + "</span><span>" + esc(fl.message) + esc(where) +
        (fl.suggestion ? ' — <code>' + esc(fl.suggestion) + "</code>" : "") + "</span></li>";
    }).join("") + "</ul>";
  }

  function renderQueries(list) {
    var items = allFixes(list).filter(function (f) { return QUERY_KINDS.indexOf(f.kind) >= 0; });
    items.sort(function (a, b) { return b.saving_ms - a.saving_ms; });
    $("queries-empty").hidden = items.length > 0;
    $("query-list").innerHTML = items.map(function (f) {
      var ev = f.evidence || {};
      var stats = [];
      if (f.kind === "n_plus_one" && ev.count) stats.push(count(ev.count) + " extra queries per request");
      else if (ev.count) stats.push(ev.count === 1 ? "once per request" : count(ev.count) + " times per request");
      if (ev.max_ms != null) stats.push("max " + ms(ev.max_ms));
      stats.push("in " + count(f.scopes) + " requests");
      stats.push("saves ~" + total(f.saving_ms));
      return '<div class="query"><div class="head"><span class="kind">' + esc(f.kind) + '</span><span class="ep">' + esc(f.endpoint) + "</span>" +
        '<span class="stats">' + esc(stats.join(" · ")) + "</span></div>" +
        '<div class="msg">' + esc(f.message) + "</div>" +
        (f.call_site ? '<div class="site note">at <code>' + esc(f.call_site) + "</code></div>" : "") +
        (f.sql ? '<pre class="sql">' + esc(f.sql) + "</pre>" : "") +
        flagList(ev.plan_flags) +
        (f.change ? paste(f.change) : "") + "</div>";
    }).join("");
  }

  function percentiles(p) { return p ? ms(p.p50) + ' <span class="sub">/ ' + ms(p.p99) + "</span>" : '<span class="sub">n/a</span>'; }
  function table(head, rows) {
    return '<table class="grid"><thead><tr>' + head.map(function (h) {
      var num = h.charAt(0) === "#";
      return "<th" + (num ? ' class="num"' : "") + ">" + esc(num ? h.slice(1) : h) + "</th>";
    }).join("") + "</tr></thead><tbody>" + rows.join("") + "</tbody></table>";
  }
  function td(html, num) { return "<td" + (num ? ' class="num"' : "") + ">" + html + "</td>"; }
  function empty(text) { return '<p class="empty">' + esc(text) + "</p>"; }
  function pidOf(item) { return item.pid != null ? '<div class="sub">pid ' + esc(item.pid) + "</div>" : ""; }

  function renderPools(state) {
    var pools = state.pools || [];
    if (!pools.length) { $("pool-box").innerHTML = empty("No pool metered in this run (hotpath.pool.instrument_pool meters one)."); return; }
    var rows = pools.map(function (p) {
      var waitCls = p.waiting ? "p-bad" : "";
      var holders = (p.holders || []).map(function (h) {
        return "<li>" + count(h.count) + "× <code>" + esc(h.call_site) + "</code> held up to " + h.longest_s.toFixed(2) + " s</li>";
      }).join("");
      return "<tr>" + td('<b>' + esc(p.name) + '</b><div class="sub">' + esc(p.kind) + "</div>" + pidOf(p)) +
        td(count(p.size) + ' <span class="sub">/ ' + count(p.pool_size + p.max_overflow) + "</span>", true) +
        td(count(p.checked_out), true) + td(count(p.idle), true) +
        td('<span class="' + waitCls + '">' + (p.waiting == null ? "n/a" : count(p.waiting)) + "</span>", true) +
        td(percentiles(p.acquire_wait), true) + td(percentiles(p.hold), true) +
        td(count(p.checkouts), true) + td(count(p.connects), true) +
        td('<span class="' + (p.timeouts ? "p-bad" : "") + '">' + (p.timeouts == null ? "n/a" : count(p.timeouts)) + "</span>", true) +
        td('<span class="' + (p.leaks ? "p-warn" : "") + '">' + count(p.leaks) + "</span>", true) +
        td(holders ? '<ul class="holders">' + holders + "</ul>" : '<span class="sub">none</span>') + "</tr>";
    });
    $("pool-box").innerHTML = table(["Pool", "#Open / max", "#In use", "#Idle", "#Waiting", "#Acquire wait p50 / p99", "#Hold p50 / p99", "#Checkouts", "#Connects", "#Timeouts", "#Leaks", "Holders now"], rows);
  }

  function ratioBar(ratio) {
    var colour = ratio >= 0.8 ? "#2da44e" : ratio >= 0.5 ? "#d4a72c" : "#cf222e";
    return '<div class="ratio"><div class="track"><div class="fill" style="width:' + (100 * ratio).toFixed(1) + "%;background:" + colour + '"></div></div>' + pct(ratio) + "</div>";
  }

  function renderCaches(state) {
    var caches = state.caches || [];
    if (!caches.length) { $("cache-box").innerHTML = empty("No hotpath.cache in this run."); return; }
    var rows = caches.map(function (c) {
      var l1 = c.l1_hits || 0, l2 = c.l2_hits || 0, misses = c.misses || 0, lookups = l1 + l2 + misses;
      var circuit = c.circuit === "open" ? chip("bad", "open") : c.circuit === "half_open" ? chip("warn", "half open") : c.circuit === "closed" ? chip("good", "closed") : '<span class="sub">' + esc(c.circuit || "n/a") + "</span>";
      return "<tr>" + td("<b>" + esc(c.namespace) + "</b>" + pidOf(c)) + td(lookups ? ratioBar((l1 + l2) / lookups) : '<span class="sub">no lookups</span>') +
        td(lookups ? pct(l1 / lookups) : "–", true) + td(lookups ? pct(l2 / lookups) : "–", true) +
        td(count(lookups), true) + td(count(c.loads), true) + td(ms(1000 * (c.load_seconds || 0)), true) +
        td(count(c.stampede_joins), true) + td(count(c.lease_waits), true) + td(count(c.stale_served), true) +
        td('<span class="' + (c.redis_errors ? "p-warn" : "") + '">' + count(c.redis_errors) + "</span>", true) +
        td(count(c.l1_size), true) + td(circuit) + "</tr>";
    });
    $("cache-box").innerHTML = table(["Cache", "Hit ratio", "#L1 hits", "#Redis hits", "#Lookups", "#Loads", "#Load time", "#Stampede joins", "#Lease waits", "#Stale served", "#Redis errors", "#L1 entries", "Redis circuit"], rows);
  }

  function renderReplicas(state) {
    var sets = state.routing || [];
    if (!sets.length) { $("replica-box").innerHTML = '<div class="card flush">' + empty("No replica set in this run.") + "</div>"; return; }
    $("replica-box").innerHTML = sets.map(function (s) {
      var rows = (s.nodes || []).map(function (n) {
        var lagCls = n.lag_s > 1 ? "p-bad" : n.lag_s > 0.2 ? "p-warn" : "";
        return "<tr>" + td("<b>" + esc(n.name) + "</b>") + td(esc(n.role || "")) +
          td(n.healthy ? chip("good", "in use") : chip("bad", "ejected")) +
          td('<span class="' + lagCls + '">' + (n.lag_s == null ? "–" : n.lag_s.toFixed(3) + " s") + "</span>", true) +
          td(n.lag_bytes == null ? "–" : count(n.lag_bytes) + " B", true) + td(count(n.reads), true) +
          td(count(n.ejections), true) + td('<span class="sub">' + esc(n.why_ejected || "") + "</span>") + "</tr>";
      });
      var stats = Object.keys(s.stats || {}).sort().map(function (k) { return '<span class="kind">' + esc(k) + " " + count(s.stats[k]) + "</span>"; }).join(" ");
      return '<div class="card flush"><div style="padding:10px 14px 0"><h3>' + esc(s.name || "replica set") + (s.pid != null ? " <small>pid " + esc(s.pid) + "</small>" : "") + "</h3>" +
        (stats ? '<div class="note" style="margin-bottom:8px">' + stats + "</div>" : "") + "</div>" +
        table(["Node", "Role", "State", "#Lag", "#Lag (WAL)", "#Reads placed", "#Ejections", "Why ejected"], rows) + "</div>";
    }).join("");
  }

  function renderBreakers(state) {
    var breakers = state.breakers || [];
    if (!breakers.length) { $("breaker-box").innerHTML = empty("No CircuitBreaker in this run."); return; }
    $("breaker-box").innerHTML = table(["Breaker", "State", "#Successes", "#Failures", "#Consecutive", "#Rejected", "#Times opened"], breakers.map(function (b) {
      var state = b.state === "open" ? chip("bad", "open") : b.state === "half_open" ? chip("warn", "half open") : chip("good", "closed");
      return "<tr>" + td("<b>" + esc(b.name) + "</b>" + pidOf(b)) + td(state) + td(count(b.successes), true) + td(count(b.failures), true) +
        td(count(b.consecutive_failures), true) + td(count(b.rejected), true) + td(count(b.opened), true) + "</tr>";
    }));
  }

  function renderDoctor(state) {
    var findings = state.doctor;
    if (!findings) { $("doctor-box").innerHTML = '<div class="card flush">' + empty("Not checked: hotpath run --db URL adds doctor's health checks of the app's database.") + "</div>"; return; }
    if (!findings.length) { $("doctor-box").innerHTML = '<div class="card"><span class="chip good">healthy</span> doctor found nothing to fix.</div>'; return; }
    var rank = { critical: 0, warning: 1, info: 2 };
    $("doctor-box").innerHTML = findings.slice().sort(function (a, b) { return rank[a.severity] - rank[b.severity]; }).map(function (f) {
      return '<div class="query"><div class="head">' + chip("sev-" + esc(f.severity), f.severity) + '<span class="kind">' + esc(f.check) + '</span><span class="ep">' + esc(f.object) + "</span>" +
        (f.gain ? '<span class="stats">' + esc(f.gain) + "</span>" : "") + '</div><div class="msg">' + esc(f.message) + "</div>" +
        (f.fix ? paste(f.fix) : "") + "</div>";
    }).join("");
  }

  function renderUninstrumented(state) {
    var missing = state.uninstrumented || [];
    $("uninstrumented-box").innerHTML = missing.length
      ? '<div class="card flush">' + table(["What", "Why"], missing.map(function (m) { return "<tr>" + td("<code>" + esc(m.what) + "</code>" + pidOf(m)) + td(esc(m.why)) + "</tr>"; })) + "</div>"
      : '<div class="card"><span class="chip good">complete</span> everything hotpath found in the app is measured.</div>';
  }

  function renderNav(state, list) {
    var fixes = ((state.report || {}).top_fixes || []).length;
    var queries = allFixes(list).filter(function (f) { return QUERY_KINDS.indexOf(f.kind) >= 0; }).length;
    var badges = { endpoints: [list.length, ""], fixes: [fixes, fixes ? "warn" : ""], queries: [queries, queries ? "warn" : ""],
                   uninstrumented: [(state.uninstrumented || []).length, (state.uninstrumented || []).length ? "warn" : ""] };
    Array.prototype.forEach.call($("nav").querySelectorAll("a"), function (a) {
      var key = a.getAttribute("href").slice(1), badge = badges[key];
      var old = a.querySelector(".n");
      if (old) old.remove();
      if (badge && badge[0]) a.insertAdjacentHTML("beforeend", '<span class="n ' + (badge[1] || "idle") + '">' + badge[0] + "</span>");
    });
  }

  function renderRun(payload, list) {
    var state = payload.state;
    var workers = state.workers || [];
    var alive = workers.filter(function (w) { return w.alive !== false; }).length;
    var requests = list.reduce(function (s, e) { return s + e.count; }, 0);
    var parts = ["<b>" + count(requests) + "</b> requests", "<b>" + list.length + "</b> endpoints"];
    if (workers.length) parts.unshift("<b>" + alive + "</b> of " + workers.length + " workers alive");
    $("run").innerHTML = parts.join(" &middot; ");
  }

  function render(payload) {
    var state = payload.state || {};
    var list = endpoints(state);
    renderRun(payload, list);
    renderChecks(state, list);
    renderNav(state, list);
    renderEndpoints(list);
    renderLayerBars(list);
    renderHistory(payload, list);
    renderFixes(state);
    renderQueries(list);
    renderPools(state);
    renderCaches(state);
    renderReplicas(state);
    renderBreakers(state);
    renderDoctor(state);
    renderUninstrumented(state);
    document.body.setAttribute("data-polls", String(Number(document.body.getAttribute("data-polls") || 0) + 1));
  }

  // ---- polling --------------------------------------------------------------------------

  function showError(text) {
    var banner = $("error");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function poll() {
    var headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    fetch("api/state", { headers: headers, cache: "no-store" }).then(function (response) {
      return response.json().catch(function () { return { error: "HTTP " + response.status }; }).then(function (body) {
        if (!response.ok) throw new Error(body.error || "HTTP " + response.status + (response.status === 401 ? ": open the page with ?token=<token>" : ""));
        return body;
      });
    }).then(function (payload) {
      last = payload;
      lastOk = Date.now();
      showError(null);
      render(payload);
    }).catch(function (error) {
      showError("Could not read the state: " + error.message);
    }).then(function () {
      setTimeout(poll, 1000 * ((last && last.poll_s) || 2));
    });
  }

  function tick() {
    var pulse = $("pulse");
    if (!lastOk) { pulse.className = "pulse down"; return; }
    var age = (Date.now() - lastOk) / 1000;
    pulse.className = "pulse " + (age < 6 ? "ok" : age < 20 ? "stale" : "down");
    $("updated").textContent = age < 2 ? "updated just now" : "updated " + Math.round(age) + " s ago";
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) {
      var text = button.parentNode.querySelector("pre").textContent;
      var done = function () { button.textContent = "copied"; setTimeout(function () { button.textContent = "copy"; }, 1200); };
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    var row = event.target.closest("#endpoint-table tbody tr");
    if (row && last) {
      picked = row.getAttribute("data-name");
      render(last);
    }
  });
  $("endpoint-pick").addEventListener("change", function (event) {
    picked = event.target.value;
    if (last) render(last);
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (key) {
      var chart = charts[key];
      chart.setSize({ width: width(chart.root.parentNode), height: chart.height });
    });
  });

  setInterval(tick, 1000);
  poll();
})();
