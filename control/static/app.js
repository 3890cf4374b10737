// ferry's status page: fetch /api/status with the token, draw it, every 2 s.
// Only textContent is ever set from data: a name like <b>x</b> shows as text.
"use strict";

const KEY = "ferry-token";
const PERIOD_MS = 2000;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function card(title, badges, fields) {
  const dl = el("dl");
  for (const [k, v] of fields) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", null, k), el("dd", null, v));
  }
  const head = el("div", { class: "title" }, title);
  for (const [text, cls] of badges) head.append(el("span", { class: "badge " + cls }, text));
  return el("div", { class: "card" }, head, dl);
}

function lag(s) { return s === null || s === undefined ? "-" : s.toFixed(1) + " s"; }

function draw(st) {
  const hosts = document.getElementById("hosts");
  hosts.replaceChildren(...st.hosts.map(h => card(h.host,
    [[h.alive ? "alive" : "silent", h.alive ? "ok" : "bad"]],
    [["volumes", h.volumes.length ? h.volumes.join(", ") : "none"],
     ["last heard", h.last_seen_s === null ? "never" : h.last_seen_s.toFixed(1) + " s ago"],
     ["version", h.version]])));
  if (!st.hosts.length) hosts.append(el("p", { class: "muted" }, "no host has registered"));

  const vols = document.getElementById("volumes");
  vols.replaceChildren(...st.volumes.map(v => {
    const badges = [[v.owner ? "on " + v.owner : "not mounted", v.owner ? (v.owner_alive ? "ok" : "bad") : "muted"]];
    if (v.state === "removing") badges.push(["removing", "warn"]);
    if (v.move) badges.push(["moving to " + v.move.to, "warn"]);
    const labels = Object.entries(v.labels).map(([k, x]) => k + "=" + x).join(", ");
    return card(v.name, badges,
      [["owner", v.owner || "-"], ["epoch", v.epoch === null || v.epoch === undefined ? "-" : v.epoch],
       ["in use", v.in_use ? "yes" : "no"], ["durability", v.durability],
       ["layout", v.layout + (v.size ? " (" + v.size + ")" : "")], ["upload lag", lag(v.upload_lag_s)],
       ["snapshots", v.snapshots.length ? v.snapshots.join(", ") : "none"],
       ["clone of", v.clone_of], ["labels", labels]]);
  }));
  if (!st.volumes.length) vols.append(el("p", { class: "muted" }, "no volumes"));

  document.getElementById("moves").replaceChildren(...st.moves.map(m =>
    card(m.volume, [["to " + m.to, "warn"]], [["expires in", m.expires_in.toFixed(0) + " s"]])));
  document.getElementById("moves-section").hidden = !st.moves.length;
  document.getElementById("removals").replaceChildren(...st.removals.map(r =>
    card(r.name, [[r.host || "no live host", r.alive ? "ok" : "bad"]],
      [["deleted", r.total ? r.deleted + " of " + r.total + " objects" : "starting"]])));
  document.getElementById("removals-section").hidden = !st.removals.length;

  const at = new Date(st.generated * 1000);
  document.getElementById("updated").textContent =
    st.hosts.filter(h => h.alive).length + "/" + st.hosts.length + " hosts alive, " + st.volumes.length +
    " volumes; updated " + at.toLocaleTimeString();
}

function showLogin(message) {
  if (timer) { clearTimeout(timer); timer = null; }
  document.getElementById("cluster").hidden = true;
  document.getElementById("forget").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("updated").textContent = "not connected";
}

async function refresh() {
  const token = sessionStorage.getItem(KEY);
  if (!token) { showLogin(""); return; }
  try {
    const r = await fetch("/api/status", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (r.status === 401) { sessionStorage.removeItem(KEY); showLogin("That token is not accepted."); return; }
    if (!r.ok) throw new Error("the control service answered " + r.status);
    draw(await r.json());
    document.getElementById("login").hidden = true;
    document.getElementById("cluster").hidden = false;
    document.getElementById("forget").hidden = false;
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "Cannot reach the control service: " + e.message;
  }
  timer = setTimeout(refresh, PERIOD_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  // A token in the address (#token=...) is taken once and removed from it.
  const m = location.hash.match(/^#token=(.+)$/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    refresh();
  });
  document.getElementById("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });
  refresh();
});
