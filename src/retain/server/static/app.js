// Retain web UI: a support chat that remembers, and a memory inspector.
// Plain DOM, no build step. Every user-supplied string goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("retain.key") || "", session: newSessionId(), info: null };

function newSessionId() {
  return "s-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function showError(message) {
  const banner = $("error-banner");
  banner.textContent = message;
  banner.hidden = !message;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) { askForKey(); throw new ApiError(401, "This server needs a valid API key."); }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, (data && data.error && data.error.message) || response.statusText);
  return data;
}

function askForKey() {
  $("key-form").hidden = false;
  $("key-input").focus();
}

function fmtDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" }) +
    " " + d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// -- start-up and navigation ---------------------------------------------------------

async function loadInfo() {
  try {
    state.info = await api("GET", "/v1/info");
  } catch (err) {
    if (err.status !== 401) showError(err.message);
    return;
  }
  $("key-form").hidden = true;
  $("status").textContent = `tenant ${state.info.tenant_id} · ${state.info.llm ? "LLM " + state.info.llm : "no LLM"}`;
  const banner = $("llm-banner");
  banner.hidden = !!state.info.llm;
  banner.textContent = state.info.llm_help || "";
  $("send").disabled = !state.info.llm;
  $("chat-input").disabled = !state.info.llm;
}

function route() {
  const page = location.hash === "#inspector" ? "inspector" : "chat";
  $("page-chat").hidden = page !== "chat";
  $("page-inspector").hidden = page !== "inspector";
  $("nav-chat").setAttribute("aria-current", page === "chat" ? "page" : "false");
  $("nav-inspector").setAttribute("aria-current", page === "inspector" ? "page" : "false");
  if (page === "inspector" && state.info) loadMemories();
}

function takeKeyFromUrl() {
  const match = location.hash.match(/key=([^&]+)/);
  if (!match) return;
  state.key = decodeURIComponent(match[1]);
  localStorage.setItem("retain.key", state.key);
  history.replaceState(null, "", location.pathname + "#chat");
}

// -- chat ----------------------------------------------------------------------------

function addTurn(role, text) {
  const body = el("div", { class: "bubble", text });
  const item = el("li", { class: "turn " + role }, el("span", { class: "who", text: role === "user" ? "You" : "Assistant" }), body);
  $("conversation").append(item);
  item.scrollIntoView({ block: "end" });
  return body;
}

function showRemembered(memories, status) {
  const list = $("remembered");
  list.replaceChildren(...memories.map((m) => el("li", {},
    el("span", { class: "memory-text", text: m.memory }),
    m.category ? el("span", { class: "tag", text: m.category }) : null)));
  if (!memories.length) list.append(el("li", { class: "muted", text: "Nothing remembered for this reply." }));
  $("memory-status").textContent = status === "unavailable" ? "Memory was unavailable; this reply was made without it." : "";
}

async function sendChat(message) {
  const userId = $("chat-user").value.trim();
  addTurn("user", message);
  const reply = addTurn("assistant", "");
  reply.classList.add("streaming");
  $("send").disabled = true;
  const remembered = [];
  try {
    const headers = { "Content-Type": "application/json", "Accept": "text/event-stream" };
    if (state.key) headers["Authorization"] = "Bearer " + state.key;
    const body = { user_id: userId, session_id: state.session, message, mode: $("agent-mode").checked ? "agent" : "simple" };
    const response = await fetch("/v1/chat", { method: "POST", headers, body: JSON.stringify(body) });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      if (response.status === 401) askForKey();
      throw new Error((data && data.error && data.error.message) || response.statusText);
    }
    for await (const event of readEvents(response)) {
      if (event.type === "memories" || (event.type === "tool" && event.memories)) {
        remembered.push(...(event.memories || []));
        showRemembered(remembered, event.memory_status);
      } else if (event.type === "tool") {
        reply.before(el("div", { class: "tool muted small", text: `${event.tool}: ${JSON.stringify(event.arguments)}` }));
      } else if (event.type === "token") {
        reply.textContent += event.text;
      } else if (event.type === "error") {
        reply.textContent = event.detail;
        reply.classList.add("error");
      }
    }
  } catch (err) {
    reply.textContent = "Could not reach the assistant: " + err.message;
    reply.classList.add("error");
  } finally {
    reply.classList.remove("streaming");
    $("send").disabled = !(state.info && state.info.llm);
    $("chat-input").focus();
  }
}

async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

function newSession() {
  state.session = newSessionId();
  $("session-id").textContent = state.session;
  $("conversation").replaceChildren();
  $("remembered").replaceChildren();
  $("memory-status").textContent = "";
  $("chat-input").focus();
}

// -- inspector -----------------------------------------------------------------------

async function loadMemories() {
  const userId = $("inspect-user").value.trim();
  if (!userId) return;
  const params = new URLSearchParams({ user_id: userId, limit: "500", include_superseded: $("show-superseded").checked });
  try {
    const page = await api("GET", "/v1/memories?" + params);
    renderMemories(page.results);
    showError("");
  } catch (err) { showError(err.message); }
}

function renderMemories(records) {
  const current = records.filter((r) => !r.valid_to).length;
  $("memory-count").textContent = `${current} current memor${current === 1 ? "y" : "ies"}` +
    (records.length > current ? `, ${records.length - current} superseded` : "");
  $("memories").replaceChildren(...records.map(memoryItem));
}

function memoryItem(record) {
  const superseded = !!record.valid_to;
  const text = superseded ? el("del", { text: record.memory }) : el("span", { text: record.memory });
  const details = el("div", { class: "details", hidden: "" });
  const item = el("li", { class: "memory card" + (superseded ? " superseded" : ""), "data-id": record.id },
    el("p", { class: "memory-text" }, text),
    el("p", { class: "meta small muted" },
      record.category ? el("span", { class: "tag", text: record.category }) : null,
      ` valid from ${fmtDate(record.valid_from)}`,
      superseded ? ` until ${fmtDate(record.valid_to)}` : "",
      ` · updated ${fmtDate(record.updated_at)}`,
      ` · ${record.source_message_ids.length} source message${record.source_message_ids.length === 1 ? "" : "s"}`),
    el("div", { class: "row" },
      el("button", { type: "button", class: "history-button", "aria-expanded": "false", text: "History and sources",
        onclick: (e) => toggleDetails(record, details, e.currentTarget) }),
      superseded ? null : el("button", { type: "button", class: "danger", text: "Delete",
        "aria-label": `Delete memory: ${record.memory}`, onclick: () => deleteMemory(record) })),
    details);
  return item;
}

async function toggleDetails(record, details, button) {
  const open = details.hidden;
  details.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
  if (!open) return;
  details.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    const [history, sources] = await Promise.all([
      api("GET", `/v1/memories/${encodeURIComponent(record.id)}/history`),
      api("GET", `/v1/memories/${encodeURIComponent(record.id)}/sources`),
    ]);
    const timeline = el("ol", { class: "timeline", "aria-label": "History, oldest first" }, ...history.map((h) => el("li", {},
      el("span", { class: "event tag", text: h.event }),
      el("time", { datetime: h.created_at, text: fmtDate(h.created_at) }),
      h.old_memory && h.new_memory && h.old_memory !== h.new_memory
        ? el("span", {}, el("del", { text: h.old_memory }), " → ", el("span", { text: h.new_memory }))
        : el("span", { text: h.new_memory || h.old_memory || "" }),
      h.reason ? el("span", { class: "reason muted", text: `because: ${h.reason}` }) : null)));
    const sourceList = el("ul", { class: "sources", "aria-label": "Source messages" }, ...sources.map((m) =>
      el("li", {}, el("span", { class: "tag", text: m.role }), el("span", { text: m.content }))));
    details.replaceChildren(el("h4", { text: "History" }), timeline,
      el("h4", { text: "Source messages" }), sources.length ? sourceList : el("p", { class: "muted", text: "None stored." }));
  } catch (err) { details.replaceChildren(el("p", { class: "error", text: err.message })); }
}

async function deleteMemory(record) {
  if (!confirm(`Delete this memory and its whole history?\n\n${record.memory}`)) return;
  try { await api("DELETE", `/v1/memories/${encodeURIComponent(record.id)}`); await loadMemories(); }
  catch (err) { showError(err.message); }
}

async function deleteAll() {
  const userId = $("inspect-user").value.trim();
  if (!userId || !confirm(`Delete every memory, message and job of user "${userId}"? This cannot be undone.`)) return;
  try { await api("DELETE", "/v1/memories?" + new URLSearchParams({ user_id: userId })); await loadMemories(); }
  catch (err) { showError(err.message); }
}

async function search(query) {
  const table = $("search-results");
  try {
    const result = await api("POST", "/v1/memories/search",
      { query, user_id: $("inspect-user").value.trim(), limit: 10, explain: true });
    const num = (v, digits = 3) => (v === undefined || v === null ? "–" : Number(v).toFixed(digits));
    table.tBodies[0].replaceChildren(...result.results.map((hit, i) => el("tr", {},
      el("td", { text: String(i + 1) }), el("td", { text: hit.memory }), el("td", { text: num(hit.scores.rrf, 4) }),
      el("td", { text: num(hit.scores.vector) }), el("td", { text: num(hit.scores.vector_rank, 0) }),
      el("td", { text: num(hit.scores.bm25, 2) }), el("td", { text: num(hit.scores.keyword_rank, 0) }))));
    if (!result.results.length) table.tBodies[0].append(el("tr", {}, el("td", { colspan: "7", text: "No matches." })));
    table.hidden = false;
    showError("");
  } catch (err) { showError(err.message); }
}

// -- wiring --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  takeKeyFromUrl();
  $("session-id").textContent = state.session;
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.key = $("key-input").value.trim();
    localStorage.setItem("retain.key", state.key);
    await loadInfo();
    route();
  });
  $("new-session").addEventListener("click", newSession);
  $("chat-user").addEventListener("change", () => { $("inspect-user").value = $("chat-user").value; });
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const message = $("chat-input").value.trim();
    if (!message || $("send").disabled) return;
    $("chat-input").value = "";
    sendChat(message);
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("inspect-form").addEventListener("submit", (e) => { e.preventDefault(); loadMemories(); });
  $("show-superseded").addEventListener("change", loadMemories);
  $("delete-all").addEventListener("click", deleteAll);
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search($("search-query").value.trim()); });
  window.addEventListener("hashchange", route);
  await loadInfo();
  route();
});
