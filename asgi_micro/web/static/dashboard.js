// The dashboard's behaviour: the call forms, and live updates from the registry.
// Plain browser JavaScript, no build step. Replies are shown as text, never as HTML.
"use strict";

const root = document.body.dataset.root || "";
const TOKEN_KEY = "asgi-micro-token";

// The token field: kept for this tab only, sent with every call.
const tokenField = document.getElementById("token");
if (tokenField) {
  tokenField.value = sessionStorage.getItem(TOKEN_KEY) || "";
  tokenField.addEventListener("input", () => {
    const token = tokenField.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  });
  tokenField.form.addEventListener("submit", (event) => event.preventDefault());
}

function show(reply, state, value) {
  reply.dataset.state = state;
  reply.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

async function call(form) {
  const reply = form.querySelector(".reply");
  let request;
  try {
    request = JSON.parse(form.elements.request.value || "{}");
  } catch (error) {
    show(reply, "error", "The request is not JSON: " + error.message);
    return;
  }
  show(reply, "pending", "Calling " + form.dataset.endpoint + "…");
  try {
    const headers = { "content-type": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = "Bearer " + token;
    const response = await fetch(root + "/api/call", {
      method: "POST",
      headers: headers,
      body: JSON.stringify({
        service: form.dataset.service,
        endpoint: form.dataset.endpoint,
        request: request,
      }),
    });
    const body = await response.json();
    if (body.error) show(reply, "error", body.error);
    else show(reply, "ok", "replies" in body ? body.replies : body.reply);
  } catch (error) {
    show(reply, "error", "The dashboard did not answer: " + error.message);
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.call");
  if (form) {
    event.preventDefault();
    call(form);
  }
});

// -- live updates: regions with data-live are fetched again when their service changes --

const regions = document.querySelectorAll("[data-live]");
const status = document.getElementById("live-status");

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

async function refresh(region) {
  try {
    const response = await fetch(region.dataset.live, { headers: { accept: "text/html" } });
    if (response.ok) region.innerHTML = await response.text();
  } catch (error) {
    // The next change, or the next reconnection, tries again.
  }
}

if (regions.length && window.EventSource) {
  const source = new EventSource(root + "/events");
  let missed = false;
  source.addEventListener("ready", () => {
    setStatus("live", "live");
    if (missed) regions.forEach(refresh); // changes may have come while disconnected
    missed = false;
  });
  source.addEventListener("change", (event) => {
    const changed = JSON.parse(event.data);
    for (const region of regions) {
      const watched = region.dataset.watch;
      if (watched === "*" || changed.includes(watched)) refresh(region);
    }
  });
  source.addEventListener("error", () => {
    missed = true;
    setStatus("off", "reconnecting");
  });
}
