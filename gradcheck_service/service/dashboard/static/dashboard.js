/* gradcheck dashboard behaviour: Chart.js set-up from server-built configs, sortable tables, live run status.
   No plotting here: every chart is drawn by Chart.js (static/vendor/chartjs) from the JSON config the server
   embeds next to its canvas; this file only adds the formatters JSON cannot carry. */
(function () {
  "use strict";

  var POLL_MS = 2000; // how often pages with queued/running runs ask the server for their status

  var BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  var MAX_DIGITS = 15; // beyond this a double's significant digits are noise
  // Each formatter takes the significant digits to show (default 3; tick labels ask for more when needed).
  var formats = {
    bytes: function (v, digits) {
      if (v === null || v === undefined) { return "–"; }
      var size = Math.abs(v), i = 0;
      while (size >= 1024 && i < BYTE_UNITS.length - 1) { size /= 1024; i += 1; }
      var text = i === 0 ? size.toFixed(0) : size.toPrecision(digits || 3);
      return (v < 0 ? "-" : "") + text + " " + BYTE_UNITS[i];
    },
    sci: function (v, digits) {
      if (v === null || v === undefined) { return "–"; }
      if (v === 0) { return "0"; }
      var a = Math.abs(v), d = digits || 3;
      return (a >= 1e-3 && a < 1e4) ? String(Number(v.toPrecision(d))) : v.toExponential(Math.max(1, d - 2));
    },
    secs: function (v, digits) {
      if (v === null || v === undefined) { return "–"; }
      if (v >= 1) { return v.toPrecision(digits || 3) + " s"; }
      return (digits ? String(Number((v * 1000).toPrecision(digits))) : (v * 1000).toFixed(0)) + " ms";
    }
  };

  // The fewest significant digits (3 at least) at which every labelled tick reads differently: on a nearly flat
  // series Chart.js places ticks 24.900, 24.902, ... which three digits would all print as "24.9".
  function distinctDigits(fmt, values) {
    for (var digits = 3; digits < MAX_DIGITS; digits += 1) {
      var seen = {}, clash = false;
      for (var i = 0; i < values.length && !clash; i += 1) {
        var text = fmt(values[i], digits);
        clash = Object.prototype.hasOwnProperty.call(seen, text);
        seen[text] = true;
      }
      if (!clash) { return digits; }
    }
    return MAX_DIGITS;
  }

  function isPowerOfTen(v) {
    if (v <= 0) { return false; }
    var e = Math.log10(v);
    return Math.abs(e - Math.round(e)) < 1e-9;
  }

  // On a log axis spanning decades label only the powers of ten (the other ticks stay as grid lines); on a
  // narrower one the 1-2-5 ticks, and on one narrower still about five evenly picked ticks.
  function logLabel(value, ticks, index) {
    var values = ticks.map(function (t) { return t.value; });
    if (values.filter(isPowerOfTen).length >= 2) { return isPowerOfTen(value); }
    var mantissa = function (v) { return Math.round(v / Math.pow(10, Math.floor(Math.log10(v)) )); };
    var oneTwoFive = function (v) { var m = mantissa(v); return m === 1 || m === 2 || m === 5; };
    if (values.filter(oneTwoFive).length >= 2) { return oneTwoFive(value); }
    return index % Math.max(1, Math.ceil(ticks.length / 5)) === 0;
  }

  function applyFormats(config) {
    var axes = (config.gc && config.gc.axes) || {};
    var scales = config.options.scales || {};
    var valueAxis = null;
    Object.keys(axes).forEach(function (key) {
      var fmt = formats[axes[key]];
      if (!fmt || !scales[key]) { return; }
      valueAxis = valueAxis || key;
      var log = scales[key].type === "logarithmic";
      scales[key].ticks = scales[key].ticks || {};
      scales[key].ticks.callback = function (value, index, ticks) {
        if (log && !logLabel(value, ticks, index)) { return ""; }
        var labelled = ticks.filter(function (t, i) { return !log || logLabel(t.value, ticks, i); });
        return fmt(value, distinctDigits(fmt, labelled.map(function (t) { return t.value; })));
      };
    });
    var plugins = config.options.plugins = config.options.plugins || {};
    plugins.tooltip = plugins.tooltip || {};
    plugins.tooltip.callbacks = {
      label: function (ctx) {
        var status = ctx.dataset.runStatus;
        if (status) { return status[ctx.dataIndex]; }
        var key = valueAxis || (config.options.indexAxis === "y" ? "x" : "y");
        var fmt = formats[axes[key]] || function (v) { return String(v); };
        return ctx.dataset.label + ": " + fmt(ctx.parsed[key]);
      }
    };
  }

  function initCharts() {
    if (typeof window.Chart === "undefined") { return; }
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) { return; }
      var config = JSON.parse(source.textContent);
      config.options = config.options || {};
      config.options.responsive = true;
      config.options.maintainAspectRatio = false;
      config.options.animation = false;
      applyFormats(config);
      if (config.data.datasets.length === 1) {
        config.options.plugins.legend = { display: false };
      }
      delete config.gc;
      new window.Chart(canvas, config);
    });
  }

  /* ---- sortable tables: click a header with data-sort; cells may carry data-value for the sort key ---- */
  function sortTable(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.dataset.sort === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[index];
      var raw = cell ? (cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim()) : "";
      return numeric ? parseFloat(raw) : raw.toLowerCase();
    }
    rows.sort(function (a, b) {
      var ka = key(a), kb = key(b);
      var order = numeric ? ((isNaN(ka) ? -Infinity : ka) - (isNaN(kb) ? -Infinity : kb)) : (ka < kb ? -1 : ka > kb ? 1 : 0);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function initSorting() {
    document.querySelectorAll("table.sortable th[data-sort]").forEach(function (th) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(th); } });
    });
  }

  /* ---- filters: a changed drop-down applies at once ---- */
  function initFilters() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  }

  /* ---- live status of queued/running runs ---- */
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function verdictNodes(run) {
    var span;
    if (run.status === "failed" && run.faulty_modules.length) {
      span = el("span", "verdict-fail", "Faulty: ");
      run.faulty_modules.forEach(function (name, i) {
        if (i) { span.appendChild(document.createTextNode(", ")); }
        span.appendChild(el("code", "", name));
      });
    } else if (run.status === "failed") {
      span = el("span", "verdict-fail", run.failed_because.join("; ") || "failed");
    } else if (run.status === "passed") {
      span = el("span", "verdict-pass", "Gradients match");
    } else if (run.status === "inconclusive") {
      var why = run.inconclusive_because.join("; ");
      span = el("span", "verdict-inconclusive", "Inconclusive" + (why ? ": " + why : ""));
    } else if (run.status === "error") {
      span = el("span", "verdict-error", run.error || "error");
    } else if (run.status === "running") {
      var pct = run.progress === null ? "" : " · " + Math.round(run.progress * 100) + " %";
      span = el("span", "muted", (run.stage || "running") + pct);
    } else {
      span = el("span", "muted", "waiting for a worker");
    }
    return span;
  }

  function updateRow(row, run) {
    if (!row) { return; }
    row.dataset.status = run.status;
    var badge = row.querySelector("[data-role=status]");
    if (badge) { badge.className = "badge status-" + run.status; badge.textContent = run.status; }
    var verdict = row.querySelector("[data-role=verdict]");
    if (verdict) { verdict.replaceChildren(verdictNodes(run)); }
    var duration = row.querySelector("[data-role=duration]");
    if (duration) { duration.textContent = run.duration; }
  }

  function poll(url, container, onUpdate) {
    function active() {
      return Array.prototype.slice.call(
        container.querySelectorAll('[data-status="queued"], [data-status="running"]'));
    }
    function tick() {
      var items = active();
      if (container.matches('[data-status="queued"], [data-status="running"]')) { items.push(container); }
      if (!items.length) { return; }
      var ids = items.map(function (item) { return item.dataset.runId; }).join(",");
      fetch(url + "?ids=" + encodeURIComponent(ids), { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data) { data.runs.forEach(onUpdate); }
        })
        .catch(function () { /* offline for a moment: try again on the next tick */ })
        .then(function () { setTimeout(tick, POLL_MS); });
    }
    setTimeout(tick, POLL_MS);
  }

  function initLive() {
    var table = document.querySelector("table[data-live]");
    if (table) {
      poll(table.dataset.live, table, function (run) {
        updateRow(table.querySelector('tr[data-run-id="' + run.id + '"]'), run);
      });
    }
    var banner = document.querySelector("section.banner[data-live]");
    if (banner) {
      poll(banner.dataset.live, banner, function (run) {
        if (run.id !== banner.dataset.runId) { return; }
        if (run.status !== "queued" && run.status !== "running") { window.location.reload(); return; }
        banner.dataset.status = run.status;
        var text = banner.querySelector("[data-role=progress]");
        if (text) { text.textContent = run.status === "queued" ? "Waiting for a worker" : (run.stage || "Running"); }
        var bar = banner.querySelector("[data-role=progressbar]");
        if (bar && run.progress !== null) { bar.value = run.progress; }
        var badge = banner.querySelector("[data-role=status]");
        if (badge) { badge.className = "badge status-" + run.status; badge.textContent = run.status; }
      });
    }
  }

  initCharts();
  initSorting();
  initFilters();
  initLive();
}());
