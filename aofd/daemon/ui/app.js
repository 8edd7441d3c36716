// aofd status page: reads the admin API (same origin), draws tables and SVG graphs, polls.
// No framework and no build step. Every value from the API is put in the page as text
// (textContent, setAttribute), never as HTML.
"use strict";

(function () {
  const POLL_MS = 3000;
  const FILTER_DELAY_MS = 250;
  const KINDS = ["FlowBinding", "Trigger", "AgentFlow", "AgentFleet", "Agent", "Context", "Workflow"];
  const SVG = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  let route = null; // {page, args, query}
  let view = null; // {render: async () => Node}
  let timer = null;
  let generation = 0;

  // --- DOM helpers ---------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function link(href, text) {
    return h("a", { href }, text);
  }

  function kv(pairs) {
    const dl = h("dl", { class: "kv" });
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      dl.append(h("dt", {}, k), h("dd", {}, v === null || v === "" ? "-" : v));
    }
    return dl;
  }

  function table(headers, rows, empty) {
    if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing to show.");
    const head = h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)));
    const body = rows.map((cells) =>
      h("tr", {}, cells.map((c, i) => h("td", { "data-label": headers[i], class: i === 0 ? "first" : "wrap" }, c === null || c === undefined || c === "" ? "-" : c)))
    );
    return h("div", { class: "tablewrap" }, h("table", { class: "resp" }, h("thead", {}, head), h("tbody", {}, body)));
  }

  // --- status words, always as text (the colour only repeats them) --------------------------

  const TONES = {
    ok: ["ready", "completed", "applied", "unchanged", "granted", "success", "intact", "true", "ok", "started"],
    bad: ["stalled", "failed", "rejected", "denied", "timed_out", "failure", "false", "tampered", "not intact", "unavailable", "error"],
    warn: ["waiting", "progressing", "stopped", "cancelled", "expired", "skipped", "degraded"],
    run: ["running", "reconciling"],
  };

  function tone(word) {
    const w = String(word || "").toLowerCase();
    for (const [t, words] of Object.entries(TONES)) if (words.includes(w)) return t;
    return "idle";
  }

  function badge(word) {
    const text = word === true ? "yes" : word === false ? "no" : String(word || "unknown");
    const t = word === true ? "ok" : word === false ? "bad" : tone(text);
    return h("span", { class: "st st-" + t }, text);
  }

  // --- formatting ----------------------------------------------------------------------------

  function ago(epoch) {
    if (!epoch) return "-";
    const secs = Math.round(Date.now() / 1000 - Number(epoch));
    const abs = Math.abs(secs);
    const span = abs < 60 ? abs + "s" : abs < 3600 ? Math.floor(abs / 60) + "m" : abs < 86400 ? Math.floor(abs / 3600) + "h" : Math.floor(abs / 86400) + "d";
    return secs >= 0 ? span + " ago" : "in " + span;
  }

  function when(epoch) {
    if (!epoch) return "-";
    const d = new Date(Number(epoch) * 1000);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") + " (" + ago(epoch) + ")";
  }

  function duration(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return "-";
    if (ms < 1000) return Math.round(ms) + "ms";
    const secs = ms / 1000;
    if (secs < 60) return secs.toFixed(1) + "s";
    const whole = Math.floor(secs);
    if (whole < 3600) return Math.floor(whole / 60) + "m" + String(whole % 60).padStart(2, "0") + "s";
    return Math.floor(whole / 3600) + "h" + String(Math.floor((whole % 3600) / 60)).padStart(2, "0") + "m";
  }

  // An audit record's RFC 3339 time as the time of day (UTC), the full stamp as its tooltip.
  function stamp(iso) {
    if (!iso) return "-";
    const m = /T(\d\d:\d\d:\d\d(?:\.\d{1,3})?)/.exec(String(iso));
    return h("span", { title: String(iso) }, m ? m[1] : String(iso));
  }

  function verdictBadge(v) {
    if (v.ok === null || v.ok === undefined) return badge("not checked");
    return badge(v.ok ? "intact" : (v.problems || []).length ? "tampered" : "not intact");
  }

  function short(text, n) {
    const t = String(text || "");
    return t.length <= n ? t : t.slice(0, n - 1) + "…";
  }

  function pre(value) {
    if (value === null || value === undefined || value === "") return h("span", { class: "muted" }, "-");
    return h("pre", {}, typeof value === "string" ? value : JSON.stringify(value, null, 2));
  }

  // --- the API -------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" });
    if (resp.status === 401) {
      window.location.assign("/ui/login");
      throw new HttpError(401, "signed out");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) throw new HttpError(resp.status, (data && data.error) || resp.status + " " + resp.statusText);
    return data;
  }

  // --- graphs (inline SVG) -------------------------------------------------------------------

  const BOX_W = 184, BOX_H = 46, GAP_X = 26, GAP_Y = 46, PAD = 16, LABEL_W = 0;

  // nodes: [{id, row, slot, title, sub, tone, href, classes}], edges: [{from, to, label}]
  function drawGraph(nodes, edges, rowTitles) {
    const rows = [...new Set(nodes.map((n) => n.row))].sort((a, b) => a - b);
    const rowIndex = new Map(rows.map((r, i) => [r, i]));
    const left = rowTitles ? 150 : LABEL_W;
    const width = left + PAD * 2 + Math.max(1, ...nodes.map((n) => n.slot + 1)) * (BOX_W + GAP_X);
    const height = PAD * 2 + Math.max(1, rows.length) * (BOX_H + GAP_Y);
    const pos = new Map();
    for (const n of nodes) {
      pos.set(n.id, { x: left + PAD + n.slot * (BOX_W + GAP_X), y: PAD + rowIndex.get(n.row) * (BOX_H + GAP_Y) });
    }
    const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "graph" });
    svg.append(
      s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" })))
    );
    if (rowTitles) {
      for (const r of rows) {
        svg.append(s("text", { x: PAD, y: PAD + rowIndex.get(r) * (BOX_H + GAP_Y) + BOX_H / 2 + 4, class: "layer" }, rowTitles[r] || ""));
      }
    }
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + BOX_W / 2, y1 = a.y + BOX_H, x2 = b.x + BOX_W / 2, y2 = b.y;
      const d = y2 > y1
        ? `M ${x1} ${y1} C ${x1} ${y1 + GAP_Y / 2}, ${x2} ${y2 - GAP_Y / 2}, ${x2} ${y2}`
        : `M ${a.x + BOX_W} ${a.y + BOX_H / 2} C ${a.x + BOX_W + 40} ${a.y}, ${b.x + BOX_W + 40} ${b.y + BOX_H}, ${b.x + BOX_W} ${b.y + BOX_H / 2}`;
      const path = s("path", { d, class: "edge", "marker-end": "url(#arrow)" });
      if (e.label) path.append(s("title", {}, e.label));
      svg.append(path);
    }
    for (const n of nodes) {
      const p = pos.get(n.id);
      const g = s("g", { class: "gnode", "data-id": n.id });
      const rect = s("rect", { x: p.x, y: p.y, width: BOX_W, height: BOX_H, rx: 5, class: ["node", "n-" + (n.tone || "idle"), ...(n.classes || [])].join(" ") });
      g.append(s("title", {}, n.tip || n.title + " — " + n.sub));
      g.append(rect);
      g.append(s("text", { x: p.x + 8, y: p.y + 18 }, short(n.title, 26)));
      g.append(s("text", { x: p.x + 8, y: p.y + 35, class: "sub" }, short(n.sub, 30)));
      if (n.href) {
        const a = s("a", { href: n.href });
        a.append(g);
        svg.append(a);
      } else {
        svg.append(g);
      }
    }
    return h("div", { class: "graph" }, svg);
  }

  function compositionPicture(data) {
    if (data.tooLarge) return h("p", { class: "muted" }, `${data.tooLarge} resources: open one to see the graph around it.`);
    if (!data.nodes.length) return h("p", { class: "muted" }, "Nothing applied yet.");
    const nodes = data.nodes.map((n) => ({
      id: n.id,
      row: 5 - n.layer,
      slot: n.slot,
      title: n.name,
      sub: `${n.kind} · ${n.phase}${n.disabled ? " · disabled" : ""}`,
      tone: tone(n.phase),
      href: `#/resource/${encodeURIComponent(n.kind)}/${encodeURIComponent(n.name)}`,
      classes: [n.focus ? "focus" : "", n.disabled ? "disabled" : ""].filter(Boolean),
    }));
    const titles = {};
    for (const [layer, title] of Object.entries(data.layers || {})) titles[5 - Number(layer)] = title.replace(/^Layer \d+: /, "");
    return drawGraph(nodes, data.edges, titles);
  }

  // --- pages ---------------------------------------------------------------------------------

  async function overview() {
    const st = await api("/api/v1/status");
    const out = [h("h1", {}, "Overview")];
    const rejected = st.lastRejected;
    if (rejected) {
      out.push(
        h("div", { class: "banner", id: "rejected" },
          h("strong", {}, `Revision ${rejected.revision} was rejected`),
          ` (still running ${st.appliedRevision || "nothing"}): ${(rejected.errors || []).length} error(s)`,
          h("ul", { class: "errors" }, (rejected.errors || []).map((e) => h("li", {}, e))))
      );
    }
    const sealing = st.auditSealing || {};
    out.push(
      h("div", { class: "grid" },
        h("section", { class: "card", id: "daemon" }, h("h2", {}, "Daemon"),
          kv([
            ["Ready", h("span", {}, badge(st.ready ? "Ready" : "Not ready"), " ", st.readyReason || "")],
            ["Applied revision", h("code", { id: "applied-revision" }, st.appliedRevision || "-")],
            ["Version", st.version],
            ["PID", String(st.pid)],
            ["Started", when(st.startedAt)],
            ["Passes", String(st.passes)],
            ["Audit sealing", sealing.enabled ? `on (chain ${sealing.chain}, epoch ${sealing.epoch}, ${sealing.interval}s epochs)` : "off"],
          ])),
        lastPassCard(st.lastPass),
        listenersCard(st.listeners || {}))
    );
    out.push(h("h2", {}, "Sources"));
    out.push(
      table(["Source", "Revision served", "Signed by", "Last attempted", "Failures", "Error"],
        (st.sources || []).map((src) => [
          src.name,
          h("code", {}, src.lastApplied || "-"),
          signer(src),
          h("code", {}, src.lastAttempted || "-"),
          h("span", {}, String(src.consecutiveFailures || 0), src.stale ? h("span", {}, " ", badge("stale")) : null),
          src.lastError ? h("span", { class: "error" }, src.lastError) : "",
        ]), "No sources.")
    );
    return h("div", {}, out);
  }

  function signer(src) {
    const sig = src.signature;
    const refused = src.rejectedCommit;
    const parts = [];
    if (sig && sig.verified) parts.push(h("div", {}, `${sig.verified} (commit ${String(sig.commit || "").slice(0, 12)})`));
    else if (sig) parts.push(h("div", {}, `${sig.signer} (key ${sig.fingerprint}, ${sig.format} ${sig.signed || ""})`));
    if (refused) parts.push(h("div", { class: "error" }, `refused ${String(refused.commit || "").slice(0, 12)}: ${refused.reason}`));
    return parts.length ? h("div", {}, parts) : h("span", { class: "muted" }, "not verified");
  }

  function lastPassCard(last) {
    const card = h("section", { class: "card", id: "last-pass" }, h("h2", {}, "Last pass"));
    if (!last) {
      card.append(h("p", { class: "muted" }, "No pass yet."));
      return card;
    }
    card.append(
      kv([
        ["Outcome", badge(last.outcome)],
        ["Revision", h("code", {}, last.revision || "-")],
        ["Duration", duration(last.duration_ms)],
        ["Changes", `${last.created} created, ${last.updated} updated, ${last.deleted} deleted, ${last.unchanged} unchanged, ${last.failed} failed`],
        ["At", when(last.at)],
        ["Warnings", (last.warnings || []).length ? h("ul", { class: "errors" }, last.warnings.map((w) => h("li", {}, w))) : "none"],
      ])
    );
    return card;
  }

  function listenersCard(listeners) {
    const by = {};
    for (const [name, x] of Object.entries(listeners)) (by[x.platform] = by[x.platform] || []).push(name);
    const card = h("section", { class: "card", id: "listeners" }, h("h2", {}, "Listeners"));
    const platforms = Object.keys(by).sort();
    if (!platforms.length) card.append(h("p", { class: "muted" }, "No listeners."));
    for (const p of platforms) {
      card.append(h("div", {}, h("strong", {}, `${p} (${by[p].length}): `),
        h("span", { class: "pills" }, by[p].sort().map((n) => h("span", { class: "pill" }, link(`#/resource/Trigger/${encodeURIComponent(n)}`, n))))));
    }
    return card;
  }

  function resourcesPage(query) {
    const kindSel = h("select", { id: "kind", "aria-label": "kind" }, h("option", { value: "" }, "all kinds"), KINDS.map((k) => h("option", { value: k }, k)));
    kindSel.value = query.get("kind") || "";
    const filter = h("input", { type: "search", id: "filter", placeholder: "filter: name, status, reason, file…", "aria-label": "filter" });
    filter.value = query.get("q") || "";
    const refresh = () => {
      const q = new URLSearchParams();
      if (kindSel.value) q.set("kind", kindSel.value);
      if (filter.value) q.set("q", filter.value);
      history.replaceState(null, "", "#/resources" + (q.toString() ? "?" + q : ""));
      tick();
    };
    let typing = null; // typing asks once it pauses, not once a key
    kindSel.addEventListener("change", refresh);
    filter.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(refresh, FILTER_DELAY_MS);
    });
    const head = h("div", {}, h("h1", {}, "Resources"), h("div", { class: "controls" }, kindSel, filter));
    return {
      head,
      render: async () => {
        const kind = kindSel.value;
        const [data, picture] = await Promise.all([
          api("/api/v1/resources" + (kind ? "/" + encodeURIComponent(kind) : "")),
          api("/api/v1/graph"),
        ]);
        const needle = filter.value.trim().toLowerCase();
        const items = (data.items || []).filter((it) => {
          if (!needle) return true;
          const st = it.status || {};
          return [it.kind, it.name, it.namespace, st.phase, st.reason, st.message, it.source, it.path].join(" ").toLowerCase().includes(needle);
        });
        const rows = items.map((it) => {
          const st = it.status || {};
          const res = it.resolves || {};
          const counts = it.bindings;
          return [
            it.kind,
            link(`#/resource/${encodeURIComponent(it.kind)}/${encodeURIComponent(it.name)}`, it.name),
            badge(st.phase || "Unknown"),
            h("span", { title: st.message || "" }, st.reason || "-"),
            it.kind === "FlowBinding" ? [res.flow || res.agent || res.fleet || "-", " → ", res.context || "-", " ← ", res.trigger || "-"].join("") : counts ? `${counts.ready}/${counts.total} bindings Ready` : "",
            h("code", {}, short(st.observedRevision || "", 20)),
            ago(st.since),
            h("span", { class: "mono" }, `${it.path}:${it.line}`),
          ];
        });
        return h("div", {},
          h("p", { class: "muted", id: "count" }, `${items.length} of ${(data.items || []).length} resources`),
          table(["Kind", "Name", "Status", "Reason", "Resolves", "Revision", "Age", "File"], rows, "No resources match."),
          h("h2", {}, "Composition"),
          compositionPicture(picture));
      },
    };
  }

  async function resourcePage(kind, name) {
    const [data, picture] = await Promise.all([
      api(`/api/v1/resources/${encodeURIComponent(kind)}/${encodeURIComponent(name)}`),
      api(`/api/v1/graph?focus=${encodeURIComponent(kind + "/" + name)}`),
    ]);
    const it = data.items[0];
    const st = it.status || {};
    const out = [
      h("h1", {}, `${it.kind} ${it.name}`),
      h("div", { class: "grid" },
        h("section", { class: "card" }, h("h2", {}, "Resource"),
          kv([
            ["Name", it.name], ["Kind", it.kind], ["Namespace", it.namespace || "default"],
            ["Source", `${it.source || "-"}  ${it.path}:${it.line}`], ["Digest", h("code", {}, it.digest || "-")],
          ])),
        h("section", { class: "card" }, h("h2", {}, "Status"),
          kv([
            ["Phase", badge(st.phase || "Unknown")], ["Reason", st.reason], ["Message", st.message],
            ["Revision", h("code", {}, st.observedRevision || "-")], ["Since", when(st.since)],
          ]))),
      h("h2", {}, "Composition"),
      compositionPicture(picture),
    ];
    if (it.resolves) {
      const r = it.resolves;
      out.push(h("h2", {}, "Resolves to"), kv([
        ["Flow", r.flow ? link(`#/resource/AgentFlow/${encodeURIComponent(r.flow)}`, r.flow) : null],
        ["Agent", r.agent ? link(`#/resource/Agent/${encodeURIComponent(r.agent)}`, r.agent) : undefined],
        ["Fleet", r.fleet ? link(`#/resource/AgentFleet/${encodeURIComponent(r.fleet)}`, r.fleet) : undefined],
        ["Context", r.context ? link(`#/resource/Context/${encodeURIComponent(r.context)}`, r.context) : null],
        ["Trigger", r.trigger ? link(`#/resource/Trigger/${encodeURIComponent(r.trigger)}`, r.trigger) : null],
        ["Agents", (r.agents || []).join(", ")], ["Fleets", (r.fleets || []).join(", ")],
        ["Effective digest", h("code", {}, r.effectiveDigest || "-")],
      ]));
    }
    if ((it.usedBy || []).length) {
      out.push(h("h2", {}, "Used by"), h("div", { class: "pills" }, it.usedBy.map((b) => h("span", { class: "pill" }, link(`#/resource/FlowBinding/${encodeURIComponent(b)}`, b)))));
    }
    if (it.runs) out.push(h("h2", {}, "Recent runs"), runsTable(it.runs));
    out.push(h("h2", {}, "Spec"), pre(it.spec || {}));
    return h("div", {}, out);
  }

  function runsTable(items) {
    return table(["Run", "Binding", "Flow", "Context", "Status", "Started", "Duration", "Error"],
      items.map((r) => [
        link(`#/run/${encodeURIComponent(r.run_id)}`, h("code", {}, r.run_id)),
        r.binding, r.flow, r.context, badge(r.status), when(r.started_at), duration(r.duration_ms),
        r.error ? h("span", { class: "error" }, short(String(r.error).split("\n")[0], 100)) : "",
      ]), "No runs yet.");
  }

  async function runsPage() {
    const data = await api("/api/v1/runs?limit=100");
    return h("div", {}, h("h1", {}, "Runs"), runsTable(data.items || []));
  }

  async function runPage(id) {
    const r = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    const g = r.graph || { nodes: [], edges: [] };
    const picture = drawGraph(
      g.nodes.map((n) => ({
        id: n.id, row: n.layer, slot: n.slot, title: n.id,
        sub: `${n.status}${n.duration_ms !== null && n.duration_ms !== undefined ? " · " + duration(n.duration_ms) : ""}${n.type ? " · " + n.type : ""}`,
        tone: tone(n.status),
      })),
      g.edges
    );
    const tools = (r.events || []).filter((e) => String(e.action).startsWith("command."));
    const approvals = (r.events || []).filter((e) => String(e.action).startsWith("approval."));
    const usage = r.usage || {};
    return h("div", {},
      h("h1", {}, "Run ", h("code", {}, r.run_id)),
      h("div", { class: "grid" },
        h("section", { class: "card" }, h("h2", {}, "Run"),
          kv([
            ["Status", badge(r.status)],
            ["Binding", link(`#/resource/FlowBinding/${encodeURIComponent(r.binding)}`, r.binding)],
            ["Flow", r.flow], ["Context", r.context], ["Trigger", `${r.trigger} (${r.platform})`], ["User", r.user],
            ["Started", when(r.started_at)], ["Duration", duration(r.duration_ms)],
          ])),
        h("section", { class: "card" }, h("h2", {}, "Cost"),
          kv([
            ["Model calls", String(r.model_calls)], ["Tool calls", String(r.tool_calls)],
            ["Tokens", `${usage.input_tokens || 0} in, ${usage.output_tokens || 0} out`],
            ["Timeout", r.timeout_seconds ? r.timeout_seconds + "s" : "-"],
          ]))),
      r.error ? h("div", { class: "banner" }, h("strong", {}, "Error: "), r.error) : null,
      h("h2", {}, "Flow"),
      picture,
      h("h2", {}, "Nodes"),
      table(["Node", "Type", "Status", "Started", "Duration", "Output / error"],
        (r.nodes || []).map((n) => [n.id, n.type, badge(n.status), when(n.started_at), duration(n.duration_ms),
          n.error ? h("div", { class: "error" }, n.error) : pre(n.output)])),
      h("h2", {}, "Tool calls and the guard's decisions"),
      table(["Time", "Action", "Outcome", "Command", "Decision / reason", "Exit"],
        tools.map((e) => [stamp(e.time), e.action, badge(e.outcome), h("code", {}, e.command || "-"),
          decisionText(e), e.exitCode === null || e.exitCode === undefined ? "" : String(e.exitCode)]),
        "No commands in this run's audit records."),
      h("h2", {}, "Approvals"),
      table(["Time", "Action", "Outcome", "Who", "Request", "Reason"],
        approvals.map((e) => [stamp(e.time), e.action, badge(e.outcome),
          approvalWho(e), h("code", {}, short(e.approvalId || "", 16)), e.reason]),
        "No approvals in this run."),
      h("h2", {}, "Answer"),
      pre(r.answer));
  }

  // Who an approval record names: the requester of a request, the approver or denier of a
  // decision; an expiry or cancellation is nobody's.
  function approvalWho(e) {
    if (e.action === "approval.requested") return `requested by ${e.user || "-"}`;
    if (e.action === "approval.granted" || e.action === "approval.denied") return `decided by ${e.approver || e.user || "-"}`;
    return "-";
  }

  function decisionText(e) {
    const d = e.decision;
    const text = d && typeof d === "object" ? [d.outcome || d.verdict || d.result, d.rule, d.reason].filter(Boolean).join(" · ") : d;
    return [text, e.reason].filter(Boolean).join(" · ") || "-";
  }

  async function approvalsPage() {
    const data = await api("/api/v1/approvals");
    return h("div", {},
      h("h1", {}, "Approvals pending"),
      h("p", { class: "note" }, "Decisions are made on the chat platforms, where approvers are identified (or with aofctl approve and a named admin token). This page only shows them."),
      table(["Request", "Context", "Command", "Requester", "Agent / run", "Requested", "Expires", "Approvals", "May approve"],
        (data.items || []).map((a) => [
          h("code", { title: a.id }, a.id.slice(0, 12)), a.context, h("code", {}, a.command),
          `${a.requester.name || a.requester.id} (${a.requester.platform})`,
          h("span", {}, a.agent || "-", " / ", a.runId ? link(`#/run/${encodeURIComponent(a.runId)}`, a.runId) : "-"),
          a.requestedAt, `${a.expiresAt} (in ${Math.round(a.expiresInSeconds)}s)`,
          `${a.approvals} of ${a.minApprovers}`, (a.allowedUsers || []).join(", "),
        ]), "Nothing is waiting for an approval."));
  }

  async function auditPage(context) {
    const logs = await api("/api/v1/audit");
    const items = logs.items || [];
    const chosen = context || (items[0] && items[0].context);
    const out = [h("h1", {}, "Audit"),
      table(["Context", "Verify (hash chain)", "Records"],
        items.map((x) => [link(`#/audit/${encodeURIComponent(x.context)}`, x.context),
          h("span", {}, verdictBadge(x.verify), " ", x.verify.text), String(x.verify.records ?? "-")]),
        "No audit logs yet.")];
    if (chosen) {
      const tailPath = `/api/v1/audit/${encodeURIComponent(chosen)}?lines=50`;
      const t = await api(tailPath);
      // The check reads the whole log: it runs when asked, never on a poll.
      const check = h("button", { type: "button", id: "verify", onclick: async () => {
        check.disabled = true;
        check.textContent = "Checking…";
        try { await api(tailPath + "&verify=1"); } finally { tick(); }
      } }, "Check the hash chain now");
      out.push(h("h2", {}, `Context ${chosen}: the newest ${t.entries.length} records`),
        h("p", { id: "verdict" }, verdictBadge(t.verify), " ", t.verify.text,
          t.verify.checkedAt ? h("span", { class: "muted" }, ` (checked ${ago(t.verify.checkedAt)})`) : null, " ", check),
        (t.verify.problems || []).length ? h("ul", { class: "errors" }, t.verify.problems.map((p) => h("li", {}, p))) : null,
        table(["Seq", "Time", "Action", "Outcome", "User", "Command", "Run", "Approver", "Reason"],
          t.entries.map((e) => [String(e.seq ?? "-"), stamp(e.time), e.action, badge(e.outcome), e.user, e.command ? h("code", {}, e.command) : "",
            e.runId ? link(`#/run/${encodeURIComponent(e.runId)}`, short(e.runId, 12)) : "", e.approver, e.reason || e.message])));
    }
    return h("div", {}, out);
  }

  // --- routing and polling -------------------------------------------------------------------

  function parseRoute() {
    const raw = window.location.hash.replace(/^#\/?/, "");
    const [path, qs] = raw.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { page: parts[0] || "overview", args: parts.slice(1), query: new URLSearchParams(qs || "") };
  }

  function makeView(r) {
    switch (r.page) {
      case "resources": return resourcesPage(r.query);
      case "resource": return { render: () => resourcePage(r.args[0], r.args.slice(1).join("/")) };
      case "runs": return { render: runsPage };
      case "run": return { render: () => runPage(r.args[0]) };
      case "approvals": return { render: approvalsPage };
      case "audit": return { render: () => auditPage(r.args[0]) };
      default: return { render: overview };
    }
  }

  const body = h("div", { id: "content" });

  async function tick() {
    clearTimeout(timer);
    const mine = ++generation;
    if (document.hidden) {
      timer = setTimeout(tick, POLL_MS); // a hidden tab asks nothing; it catches up when shown
      return;
    }
    try {
      const node = await view.render();
      if (mine !== generation) return;
      body.replaceChildren(node);
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
      live.classList.remove("stale");
    } catch (err) {
      if (mine !== generation) return;
      if (err instanceof HttpError && err.status === 401) return;
      live.textContent = "not updated: " + err.message;
      live.classList.add("stale");
      if (err instanceof HttpError && err.status === 404) body.replaceChildren(h("div", { class: "banner" }, err.message));
    }
    if (mine === generation) timer = setTimeout(tick, POLL_MS);
  }

  function navigate() {
    route = parseRoute();
    view = makeView(route);
    for (const a of document.querySelectorAll("nav a[data-page]")) {
      const page = a.getAttribute("data-page");
      const current = page === route.page || (page === "resources" && route.page === "resource") || (page === "runs" && route.page === "run");
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = "aofd · " + route.page;
    main.replaceChildren(...(view.head ? [view.head] : []), body);
    body.replaceChildren(h("p", { class: "muted" }, "loading…"));
    tick();
  }

  window.addEventListener("hashchange", navigate);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });
  navigate();
})();
