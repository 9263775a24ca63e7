// Renderers of the feature sections, by section name: render(body, data, ctx) fills the
// section's element; render.refresh asks the page to read the section again every so many
// seconds (or sooner: render may return the seconds until the next read). Everything that came from Redis is set with textContent, never as HTML.
"use strict";
(function () {
  // "2026-12-01T13:38:00.123456+00:00": trimmed to milliseconds, which every Date parses.
  function parse(iso) {
    if (!iso) return null;
    const t = Date.parse(String(iso).replace(/(\.\d{3})\d+/, "$1"));
    return isNaN(t) ? null : t;
  }

  function relative(ms, now) {
    const s = Math.round((ms - now) / 1000);
    const a = Math.abs(s);
    const text = a < 90 ? a + " s" : a < 5400 ? Math.round(a / 60) + " min" : a < 129600 ? Math.round(a / 3600) + " h" : Math.round(a / 86400) + " d";
    if (s === 0) return "now";
    return s > 0 ? "in " + text : text + " ago";
  }

  // Relative times are redrawn every second from the instant each element carries.
  function tick() {
    const now = Date.now();
    for (const node of document.querySelectorAll("[data-at]")) node.textContent = label(node, now);
  }

  // A next tick that has passed is due: the page reads the new one shortly.
  function label(node, now) {
    const at = Number(node.dataset.at);
    return node.dataset.due && at <= now ? "due" : relative(at, now);
  }
  setInterval(tick, 1000);

  function moment(cell, iso, never, due) {
    const td = cell("td");
    const t = parse(iso);
    if (t === null) {
      td.appendChild(cell("span", iso ? iso : never, "dim"));
      return td;
    }
    td.appendChild(cell("span", new Date(t).toLocaleString()));
    const rel = cell("span", "", "dim rel");
    rel.dataset.at = String(t);
    if (due) rel.dataset.due = "1";
    rel.textContent = label(rel, Date.now());
    td.appendChild(rel);
    td.title = String(iso);
    return td;
  }

  function table(cell, heads) {
    const t = cell("table");
    const tr = cell("tr");
    for (const h of heads) tr.appendChild(cell("th", h));
    t.appendChild(cell("thead")).appendChild(tr);
    return [t, t.appendChild(cell("tbody"))];
  }

  function pause(body, data, ctx) {
    const { cell, button } = ctx;
    const [t, tbody] = table(cell, ["handler / key", "kind", "state", ""]);
    const message = cell("p", "", "dim section-message");
    for (const row of data.handlers || []) {
      const tr = cell("tr");
      tr.dataset.handler = row.name;
      const name = cell("td", row.name);
      name.appendChild(cell("span", row.key, "key"));
      const state = cell("td", row.paused ? "paused" : "running", row.paused ? "paused" : "running");
      state.dataset.state = row.paused ? "paused" : "running";
      const actions = cell("td");
      if (ctx.writable) {
        const verb = row.paused ? "resume" : "pause";
        const b = button(row.paused ? "Resume" : "Pause", async () => {
          b.disabled = true;
          try {
            const r = await ctx.post(verb, { name: row.name });
            if (r.error) throw new Error(r.error);
            await ctx.reload();
          } catch (err) {
            b.disabled = false;
            message.className = "error section-message";
            message.textContent = verb + " " + row.name + " refused: " + err.message;
          }
        }, row.paused ? "" : "danger");
        actions.appendChild(b);
      }
      tr.append(name, cell("td", row.kind), state, actions);
      tbody.appendChild(tr);
    }
    const note = ctx.writable ? "A paused handler starts nothing new; what runs finishes, nothing is lost."
      : ctx.tokenSet ? "Read-only: log in with the token to pause or resume."
      : "Read-only: start the dashboard with a token to pause or resume.";
    body.replaceChildren(cell("p", note, "dim"), t, message);
  }
  pause.refresh = 5;

  function schedules(body, data, ctx) {
    const { cell } = ctx;
    const [t, tbody] = table(cell, ["handler", "queue", "schedule", "next tick", "last fired"]);
    let soonest = Infinity;
    for (const row of data.schedules || []) {
      const tr = cell("tr");
      tr.dataset.handler = row.name;
      const next = moment(cell, row.next, "-", true);
      soonest = Math.min(soonest, parse(row.next) ?? Infinity);
      next.dataset.field = "next";
      const last = moment(cell, row.last_fired, "never");
      last.dataset.field = "last_fired";
      tr.append(cell("td", row.name), cell("td", row.queue), cell("td", row.schedule), next, last);
      tbody.appendChild(tr);
    }
    body.replaceChildren(t);
    // Read again soon after the soonest tick passes, and at least every refresh seconds.
    return Math.min(schedules.refresh, Math.max(0.5, (soonest - Date.now()) / 1000 + 0.3));
  }
  schedules.refresh = 2;

  window.aioredqSections = Object.assign(window.aioredqSections || {}, { pause, schedules });
})();
