// The moe console: plain JavaScript over the service's JSON API (no library, no build step).
// Every value from the server or the user reaches the page through textContent, never as HTML.
// The admin token is kept in one closure variable: never stored, never put in a URL.
"use strict";

(() => {
  let token = null; // the admin token, in memory only
  let experts = []; // the last GET /experts answer's experts
  let lastMetrics = null; // {t, classify: {count, buckets}} of the previous /metrics poll
  let passRates = {}; // class -> pass rate since start
  let textsClassified = 0; // texts the service has classified since start

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

  // One call to the API: JSON in, JSON out; a non-2xx answer becomes an Error with the service's message.
  async function api(method, path, body, admin) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (admin) headers.authorization = `Bearer ${token || ""}`;
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!res.ok) {
      const e = json && json.error ? json.error : { code: "http", message: text || res.statusText };
      const err = new Error(`${res.status} ${e.code}: ${e.message}`);
      err.status = res.status;
      throw err;
    }
    return json;
  }

  // ---- Try it --------------------------------------------------------------------------------

  function bar(p, threshold, passed) {
    const outer = el("div", {
      class: passed ? "bar passed" : "bar",
      role: "img",
      "aria-label": `probability ${fmt(p)}, threshold ${fmt(threshold)}, ${passed ? "passed" : "not passed"}`,
    });
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    const mark = el("div", { class: "mark", title: `threshold ${fmt(threshold)}` });
    mark.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
    outer.append(fill, mark);
    return outer;
  }

  function renderResult(text, r, index) {
    const decision = r.abstained
      ? el("p", { class: "decision abstained", "data-label": "" }, `Abstained (best guess: ${r.best_guess})`)
      : el("p", { class: "decision", "data-label": r.label }, "Label: ", el("strong", { text: r.label }));
    const rows = [...r.experts].sort((a, b) => b.probability - a.probability);
    const table = el(
      "table",
      { class: "bars" },
      el("caption", { class: "visually-hidden", text: `Every expert's answer for text ${index + 1}` }),
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["expert", "probability vs threshold", "p", "threshold", "passed", "gate weight", "algorithm", "version"].map(
            (h) => el("th", { scope: "col", text: h }),
          ),
        ),
      ),
      el(
        "tbody",
        {},
        ...rows.map((e) =>
          el(
            "tr",
            { class: e.passed ? "expert passed" : "expert", "data-class": e.class },
            el("th", { scope: "row", text: e.class }),
            el("td", { class: "barcell" }, bar(e.probability, e.threshold, e.passed)),
            el("td", { class: "num prob", text: fmt(e.probability) }),
            el("td", { class: "num", text: fmt(e.threshold) }),
            el("td", { class: "passed-cell", text: e.passed ? "yes" : "no" }),
            el("td", { class: "num", text: fmt(e.gate_weight) }),
            el("td", { class: "minor", text: e.algorithm }),
            el("td", { class: "minor", text: e.version }),
          ),
        ),
      ),
    );
    const truncated = r.truncated ? el("p", { class: "hint", text: "The text was truncated to the model's length." }) : "";
    const pick = el(
      "select",
      { class: "feedback-label", "aria-label": `True label of text ${index + 1}` },
      ...experts.map((e) => el("option", { value: e.class, text: e.class })),
    );
    pick.value = r.label || r.best_guess;
    const said = el("span", { class: "feedback-result", role: "status" });
    const send = el("button", { type: "button", class: "feedback-send" }, "Send as feedback");
    send.addEventListener("click", async () => {
      try {
        const f = await api("POST", "/feedback", { text, label: pick.value });
        said.textContent = `Recorded (${f.correct ? "the set was right" : "the set said " + (f.predicted || "nothing")}); ${f.entries} in the log.`;
        await refreshExperts();
      } catch (e) {
        said.textContent = `Refused: ${e.message}`;
      }
    });
    const feedback = el("div", { class: "row" }, el("span", { text: "True label:" }), pick, send, said);
    return el(
      "article",
      { class: "result", "aria-label": `Result for text ${index + 1}` },
      el("h3", { text: text }),
      decision,
      truncated,
      el("div", { class: "scroll" }, table),
      feedback,
    );
  }

  async function classify(ev) {
    ev.preventDefault();
    const texts = $("texts")
      .value.split("\n")
      .map((t) => t.trim())
      .filter((t) => t.length > 0);
    const summary = $("try-summary");
    const results = $("results");
    if (texts.length === 0) {
      summary.textContent = "Type at least one text.";
      return;
    }
    const body = texts.length === 1 ? { text: texts[0] } : { texts };
    const view = $("only-passed").checked ? "?experts=passed" : "?experts=all";
    const started = performance.now();
    try {
      const out = await api("POST", `/classify${view}`, body);
      const roundTrip = performance.now() - started;
      summary.textContent =
        `${texts.length} text${texts.length > 1 ? "s" : ""}: ${fmt(out.took_ms, 2)} ms in the service, ` +
        `${fmt(roundTrip, 1)} ms round trip, expert set generation ${out.generation}.`;
      results.replaceChildren(...out.results.map((r, i) => renderResult(texts[i], r, i)));
    } catch (e) {
      summary.textContent = `Refused: ${e.message}`;
      results.replaceChildren();
    }
  }

  // ---- Experts -------------------------------------------------------------------------------

  function valMetric(e, name) {
    const m = e.metrics && e.metrics.val && e.metrics.val.report;
    return m ? m[name] : null;
  }

  // Share of the texts classified since start on which this class's expert passed its threshold.
  function passRate(cls) {
    if (!textsClassified) return "–";
    return `${fmt((passRates[cls] || 0) * 100, 1)}%`;
  }

  // Precision / recall of this version at its threshold on the feedback it scored.
  function liveText(l) {
    if (!l || !l.texts) return "–";
    return `${fmt(l.precision, 2)} / ${fmt(l.recall, 2)} (${l.texts})`;
  }

  function shadowText(sh) {
    if (!sh) return "–";
    const agree = sh.agreement_rate === null ? "no traffic yet" : `agrees ${fmt(sh.agreement_rate * 100, 1)}%`;
    return `${sh.bundle} (${sh.version}): ${sh.texts} texts, ${agree}`;
  }

  async function toggleHistory(details, cls) {
    if (!details.open) return;
    const list = details.querySelector("ol");
    try {
      const h = await api("GET", `/experts/${encodeURIComponent(cls)}/history`);
      list.replaceChildren(
        ...h.history
          .slice()
          .reverse()
          .map((x) => el("li", { text: `${x.at || ""} ${x.action}: ${x.bundle || "(none)"} ${x.version || ""}`.trim() })),
      );
    } catch (e) {
      list.replaceChildren(el("li", { text: e.message }));
    }
  }

  function renderExperts(list) {
    experts = list.experts;
    const g = list.gate;
    $("gate").textContent =
      `Gate: ${g.active} (configured ${g.configured}, score ${g.score})` +
      (g.disabled_reason ? ` — disabled: ${g.disabled_reason}` : "") +
      ` · generation ${list.generation} · ${experts.length} experts`;
    const rows = experts.map((e) => {
      const details = el("details", {}, el("summary", { text: "history" }), el("ol", {}));
      details.addEventListener("toggle", () => toggleHistory(details, e.class));
      return el(
        "tr",
        { "data-class": e.class },
        el("th", { scope: "row", text: e.class }),
        el("td", {}, el("div", { class: "bundle", text: e.bundle }), el("div", { class: "version minor", text: e.version })),
        el("td", { text: e.algorithm }),
        el("td", { class: "num", text: fmt(e.threshold) }),
        el("td", { class: "num", text: fmt(valMetric(e, "eer")) }),
        el("td", { class: "num", text: fmt(valMetric(e, "auc")) }),
        el("td", { class: "num passrate", text: passRate(e.class) }),
        el("td", { text: e.provider }),
        el("td", { class: "minor", text: e.loaded_at }),
        el("td", { class: "shadow", text: shadowText(e.shadow) }),
        el("td", { class: "num live", text: liveText(e.live) }),
        el("td", {}, details),
      );
    });
    $("experts-table").querySelector("tbody").replaceChildren(...rows);
    const sel = $("op-class");
    const current = sel.value;
    sel.replaceChildren(...experts.map((e) => el("option", { value: e.class, text: e.class })));
    if (experts.some((e) => e.class === current)) sel.value = current;
    loadBundles();
  }

  async function refreshExperts() {
    try {
      renderExperts(await api("GET", "/experts"));
    } catch (e) {
      $("gate").textContent = `Cannot read the experts: ${e.message}`;
    }
  }

  async function refreshStatus() {
    try {
      const r = await api("GET", "/readyz");
      $("status").textContent = `Ready: ${r.experts} experts, generation ${r.generation}.`;
      $("status").className = "ok";
    } catch (e) {
      $("status").textContent = `Not ready: ${e.message}`;
      $("status").className = "bad";
    }
  }

  // ---- Live numbers --------------------------------------------------------------------------

  // Prometheus text → [{name, labels, value}].
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/);
      if (!m) continue;
      const labels = {};
      for (const l of (m[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return out;
  }

  // The upper bound of the bucket holding quantile q of a cumulative histogram [{le, count}].
  function quantile(buckets, q) {
    const total = buckets.length ? buckets[buckets.length - 1].count : 0;
    if (total <= 0) return null;
    const b = buckets.find((x) => x.count >= q * total);
    return b ? b.le : null;
  }

  const ms = (s) => (s === null ? "–" : s === Infinity ? "> 10 s" : `≤ ${fmt(s * 1000, s < 0.01 ? 1 : 0)} ms`);

  async function refreshMetrics() {
    let samples;
    try {
      const res = await fetch("/metrics");
      samples = parseMetrics(await res.text());
    } catch {
      return;
    }
    const sum = (pred) => samples.filter(pred).reduce((a, s) => a + s.value, 0);
    const count = sum((s) => s.name === "moe_http_requests_total" && s.labels.route === "/classify");
    const buckets = samples
      .filter((s) => s.name === "moe_http_request_duration_seconds_bucket" && s.labels.route === "/classify")
      .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), count: s.value }))
      .sort((a, b) => a.le - b.le);
    const now = performance.now();
    let window = buckets;
    if (lastMetrics && count > lastMetrics.count) {
      const dt = (now - lastMetrics.t) / 1000;
      $("live-rps").textContent = fmt((count - lastMetrics.count) / dt, 1);
      window = buckets.map((b, i) => ({ le: b.le, count: b.count - (lastMetrics.buckets[i] || { count: 0 }).count }));
    } else if (lastMetrics) {
      $("live-rps").textContent = "0.0";
    }
    $("live-p50").textContent = ms(quantile(window, 0.5));
    $("live-p99").textContent = ms(quantile(window, 0.99));
    lastMetrics = { t: now, count, buckets };
    $("live-errors").textContent = String(sum((s) => s.name === "moe_errors_total"));
    const texts = sum((s) => s.name === "moe_texts_classified_total");
    $("live-texts").textContent = String(texts);
    const abst = sum((s) => s.name === "moe_labels_total" && s.labels.label === "(abstained)");
    $("live-abstained").textContent = texts ? `${abst} (${fmt((abst / texts) * 100, 1)}%)` : "–";
    passRates = {};
    if (texts > 0) {
      for (const s of samples.filter((x) => x.name === "moe_expert_passed_total")) {
        passRates[s.labels.class] = s.value / texts;
      }
    }
    textsClassified = texts;
    for (const row of $("experts-table").querySelectorAll("tbody tr")) {
      row.querySelector(".passrate").textContent = passRate(row.dataset.class);
    }
  }

  // ---- Operate -------------------------------------------------------------------------------

  function setToken(value) {
    token = value && value.length ? value : null;
    $("token").value = "";
    $("ops").disabled = token === null;
    $("teach").disabled = token === null;
    $("unknowns").disabled = token === null;
    $("token-state").textContent = token
      ? "Token set (in this page's memory only). The service checks it on every action."
      : "No token: the controls below are off. The token stays in this page's memory only.";
  }

  async function loadBundles() {
    const cls = $("op-class").value;
    if (!cls) return;
    try {
      const b = await api("GET", `/bundles?class=${encodeURIComponent(cls)}`);
      const sel = $("op-bundle");
      const current = sel.value;
      sel.replaceChildren(
        ...b.bundles.map((x) => {
          const tag = x.active ? " (active)" : x.shadow ? " (shadow)" : "";
          return el("option", { value: x.bundle, text: `${x.bundle} — ${x.version}${tag}` });
        }),
      );
      if (b.bundles.some((x) => x.bundle === current)) sel.value = current;
    } catch (e) {
      $("op-result").textContent = `Cannot list bundles: ${e.message}`;
    }
  }

  async function act(label, method, path, body) {
    const out = $("op-result");
    out.textContent = `${label}…`;
    try {
      const r = await api(method, path, body, true);
      const what = r && r.version !== undefined ? `${r.bundle || "(none)"} ${r.version || ""}`.trim() : "";
      out.textContent = `${label}: done${what ? ` — now ${what}` : ""}${r && r.took_ms !== undefined ? ` in ${fmt(r.took_ms, 1)} ms` : ""}.`;
      out.className = "ok";
      await refreshExperts();
      await refreshStatus();
      return r;
    } catch (e) {
      out.textContent = `${label} refused: ${e.message}`;
      out.className = "bad";
      return null;
    }
  }

  async function followJob(job, label) {
    const pre = $("op-job");
    pre.hidden = false;
    for (;;) {
      pre.textContent = JSON.stringify(job, null, 2);
      if (job.state !== "running") break;
      await new Promise((r) => setTimeout(r, 1000));
      try {
        job = await api("GET", `/jobs/${job.id}`);
      } catch (e) {
        pre.textContent = e.message;
        return;
      }
    }
    $("op-result").textContent = `${label} job ${job.id}: ${job.state}${job.error ? ` — ${job.error}` : ""}.`;
    await refreshExperts();
  }

  function wireOperate() {
    const cls = () => encodeURIComponent($("op-class").value);
    const bundle = () => $("op-bundle").value;
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      setToken($("token").value);
    });
    $("forget-token").addEventListener("click", () => setToken(null));
    $("op-class").addEventListener("change", loadBundles);
    $("op-swap").addEventListener("click", () => act("Swap", "PUT", `/experts/${cls()}`, { bundle: bundle() }));
    $("op-rollback").addEventListener("click", () => act("Rollback", "POST", `/experts/${cls()}/rollback`));
    $("op-shadow").addEventListener("click", () =>
      act("Attach shadow", "PUT", `/experts/${cls()}/shadow`, { bundle: bundle() }),
    );
    $("op-promote").addEventListener("click", () => act("Promote shadow", "POST", `/experts/${cls()}/shadow/promote`));
    $("op-drop").addEventListener("click", () => act("Drop shadow", "DELETE", `/experts/${cls()}/shadow`));
    $("op-select").addEventListener("click", async () => {
      const job = await act("Start selection job", "POST", `/experts/${cls()}/select`, {});
      if (job) await followJob(job, "Selection");
    });
  }

  function wireTeach() {
    $("teach-train").addEventListener("click", async () => {
      const cls = $("teach-class").value.trim();
      const positives = $("teach-positives")
        .value.split("\n")
        .map((t) => t.trim())
        .filter((t) => t.length > 0);
      if (!cls) {
        $("op-result").textContent = "Name the class to teach.";
        return;
      }
      const body = { positives, mode: $("teach-mode").value };
      const job = await act("Start training job", "POST", `/experts/${encodeURIComponent(cls)}/train`, body);
      if (job) await followJob(job, "Training");
    });
  }

  // ---- Unknowns ------------------------------------------------------------------------------

  function renderGroup(g, params) {
    const name = el("input", { type: "text", class: "group-class", spellcheck: "false", autocomplete: "off" });
    name.setAttribute("aria-label", `new class name for group ${g.id}`);
    const teach = el("button", { type: "button", class: "group-teach", text: "Teach as a new class" });
    teach.addEventListener("click", async () => {
      const cls = name.value.trim();
      if (!cls) {
        $("op-result").textContent = "Name the new class first.";
        return;
      }
      const body = { class: cls, similarity: params.similarity, min_size: params.min_size };
      const job = await act("Start training job", "POST", `/unknowns/${encodeURIComponent(g.id)}/teach`, body);
      if (job) {
        await followJob(job, "Training");
        await listUnknowns();
      }
    });
    const reasons = Object.entries(g.reasons)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ");
    return el(
      "article",
      { class: "group", "data-group": g.id },
      el(
        "h3",
        {
          text: `${g.size} texts (declined ${g.seen}×) — best guess ${g.best_guess} for ${g.best_guess_texts}; cohesion ${fmt(g.cohesion, 2)}`,
        },
      ),
      el("p", { class: "hint", text: `${reasons}; first ${g.first_seen}, last ${g.last_seen}` }),
      el("ul", {}, ...g.examples.map((t) => el("li", { text: t }))),
      el("div", { class: "row" }, name, teach),
    );
  }

  async function listUnknowns() {
    const params = { similarity: Number($("unknowns-similarity").value), min_size: Number($("unknowns-min-size").value) };
    const q = `similarity=${encodeURIComponent(params.similarity)}&min_size=${encodeURIComponent(params.min_size)}`;
    try {
      const u = await api("GET", `/unknowns?${q}`, undefined, true);
      $("unknowns-summary").textContent =
        `${u.kept} declined texts kept (declined ${u.seen}×): ${u.groups.length} group` +
        `${u.groups.length === 1 ? "" : "s"}, ${u.ungrouped} ungrouped` +
        (u.not_comparable ? `, ${u.not_comparable} from another trunk` : "") +
        ".";
      $("unknowns-groups").replaceChildren(...u.groups.map((g) => renderGroup(g, params)));
    } catch (e) {
      $("unknowns-summary").textContent = `Cannot list the unknowns: ${e.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("unknowns-list").addEventListener("click", listUnknowns);
    $("try-form").addEventListener("submit", classify);
    wireOperate();
    wireTeach();
    setToken(null);
    refreshStatus();
    refreshExperts().then(refreshMetrics);
    setInterval(() => {
      if (document.visibilityState === "visible") {
        refreshMetrics();
        refreshStatus();
      }
    }, 2000);
  });
})();
