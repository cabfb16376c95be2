// The recommendation console: renders the API's JSON into pages, no framework, no build step.
//
// Hash routes keep every page a deep link: #/ and #/user/ID?filters (a shopper's history and
// recommendations), #/item/ID (similar items per method, bought together), #/session (an
// anonymous visit, built by clicking), #/model (the served run, evaluation, validation, alias).
// Text from the catalogue is only ever set as text (never parsed as HTML): titles come from a
// retailer's files.
"use strict";

const KEY_STORE = "recsys.console.apiKey";
const SESSION_STORE = "recsys.console.session";
const MAX_SESSION = 200; // POST /recommendations takes at most 200 session items
const METHODS = [
  ["behaviour", "Behaviour", "Bought by the same shoppers"],
  ["content", "Content", "Similar description or attributes"],
  ["sessions", "Sessions", "Viewed in the same sessions"],
  ["hybrid", "Hybrid", "All of them, fused by rank"],
];

// ------------------------------------------------------------------------------- DOM helpers
/** An element with attributes (on* = listeners, class, data-*) and children (text or nodes). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const fmt = {
  price: (v) => (v === null || v === undefined ? "price n/a" : Number(v).toFixed(2)),
  score: (v) => {
    if (v === null || v === undefined) return "";
    const n = Number(v); // small scores (session pipeline probabilities) keep two digits
    return n !== 0 && Math.abs(n) < 0.01 ? n.toPrecision(2) : n.toFixed(3);
  },
  metric: (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(4)),
  share: (v) => (v === null || v === undefined ? "–" : `${(100 * Number(v)).toFixed(1)}%`),
  int: (v) => (v === null || v === undefined ? "–" : Math.round(Number(v)).toLocaleString("en")),
  when: (v) => {
    if (!v) return "–";
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? String(v) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  },
};

// ------------------------------------------------------------------------------- colours
// Catalogue colour names (generated data, H&M's colour groups, ASOS...) to CSS colours: the
// name as is, else its base word lightened or darkened by "light"/"dark"; unknown: grey.
const COLOURS = {
  black: "#1f1f1f", white: "#fafafa", "off white": "#f3efe3", navy: "#1f2f57", blue: "#2f6fbf",
  grey: "#8d8f94", gray: "#8d8f94", beige: "#d9c6a5", red: "#c0392b", green: "#3f8f4f",
  pink: "#ec9ab8", brown: "#7b5236", yellow: "#f2c94c", khaki: "#a39b6b", orange: "#e67e22",
  purple: "#7d4fa0", lilac: "#b9a2d6", turquoise: "#3cb4b0", gold: "#c9a646", silver: "#c0c4c8",
  bronze: "#a86d3c", copper: "#b8693d", cream: "#f2ead3", ivory: "#f6f1e1", camel: "#c19a6b",
  burgundy: "#7a2335", wine: "#722f37", olive: "#6b7138", mint: "#a8dcc0", coral: "#f08070",
  teal: "#2a7f80", denim: "#4a6e9c", tan: "#c8a27a", mole: "#6f6558", multi: "#9a8fbf",
  nude: "#e3bfa2", rose: "#e38aa5", mustard: "#d4a62a", charcoal: "#3c3f44", stone: "#c9c1b1",
  sand: "#d8c7a0", lavender: "#c3b1e1", transparent: "#e9eef2", greige: "#b7ad9c",
};
const GREY = "#b0b4ba";

function mix(hex, toward, share) {
  const a = parseInt(hex.slice(1), 16);
  const b = parseInt(toward.slice(1), 16);
  const ch = (v, s) => (v >> s) & 255;
  const out = [16, 8, 0].map((s) => Math.round(ch(a, s) * (1 - share) + ch(b, s) * share));
  return "#" + out.map((v) => v.toString(16).padStart(2, "0")).join("");
}

function cssColour(name) {
  if (!name) return GREY;
  const key = String(name).toLowerCase().replace(/[_\-/]+/g, " ").replace(/\s+/g, " ").trim();
  if (COLOURS[key]) return COLOURS[key];
  const words = key.split(" ");
  const base = [...words].reverse().find((w) => COLOURS[w.replace(/ish$/, "")]) || "";
  const colour = COLOURS[base.replace(/ish$/, "")];
  if (!colour) return GREY;
  if (words.includes("light") || words.includes("pale")) return mix(colour, "#ffffff", 0.45);
  if (words.includes("dark") || words.includes("deep")) return mix(colour, "#000000", 0.35);
  return colour;
}

function swatch(name, extraClass) {
  const el = h("span", { class: `swatch ${extraClass || ""}`, "aria-hidden": "true" });
  el.style.setProperty("--swatch", cssColour(name)); // CSSOM: allowed by the page's CSP
  return el;
}

// ------------------------------------------------------------------------------- the API
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

/** JSON from this API, with the stored key; errors carry the status and the API's detail. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers["X-API-Key"] = key;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data && data.detail ? detailText(data.detail) : res.statusText);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function errorBox(err) {
  const auth = err instanceof ApiError && (err.status === 401 || err.status === 403);
  return h("div", { class: "notice notice-error", role: "alert" },
    h("strong", {}, err instanceof ApiError ? `Error ${err.status}: ` : "Error: "), err.message,
    auth ? h("p", {}, "This API asks for a key with the read scope: enter it under “API key” at the top.") : null);
}

function loading(what) {
  return h("p", { class: "loading", "aria-busy": "true" }, `Loading ${what}…`);
}

// ------------------------------------------------------------------------------- items
function sourceChips(sources) {
  if (!sources || !sources.length) return null;
  return h("ul", { class: "chips", "aria-label": "Candidate sources" },
    sources.map((s) => h("li", { class: `chip chip-src src-${String(s).replace(/[^a-z0-9_]/gi, "")}` }, s)));
}

/** A recommendation card: visual tile, title (a link to the item page), facts, sources, reasons. */
function itemCard(item, { action, isNew, showScore = true } = {}) {
  const tile = h("div", { class: "card-tile", "aria-hidden": "true" },
    h("span", { class: "tile-label" }, item.category || "item"));
  tile.style.setProperty("--swatch", cssColour(item.colour));
  return h("article", { class: `card${isNew ? " card-new" : ""}`, "data-item-id": item.item_id },
    h("div", { class: "card-head" },
      item.rank ? h("span", { class: "rank", title: "Rank" }, `#${item.rank}`) : null,
      isNew ? h("span", { class: "badge badge-new" }, "new") : null,
      showScore && item.score !== undefined
        ? h("span", { class: "score", title: "Score (higher is better)" }, fmt.score(item.score)) : null),
    tile,
    h("h3", { class: "card-title" }, h("a", { href: `#/item/${encodeURIComponent(item.item_id)}` }, item.title || item.item_id)),
    h("p", { class: "card-meta" }, [item.category, item.department].filter(Boolean).join(" · ") || "uncategorised"),
    h("p", { class: "card-facts" },
      h("span", { class: "colour" }, swatch(item.colour), item.colour || "colour n/a"),
      h("span", { class: "price" }, fmt.price(item.price))),
    sourceChips(item.sources),
    reasonList(item.reasons),
    action ? h("button", { type: "button", class: "btn btn-small card-action", onclick: () => action.run(item) }, action.label) : null);
}

/** A compact row: swatch, title link, category and price (history, session, similar lists). */
function itemRow(item, { extra, action } = {}) {
  const known = item.title !== undefined && item.title !== null;
  return h("li", { class: "row-item", "data-item-id": item.item_id },
    swatch(item.colour, "swatch-lg"),
    h("div", { class: "row-body" },
      h("a", { href: `#/item/${encodeURIComponent(item.item_id)}` }, known ? item.title : item.item_id),
      h("span", { class: "row-meta" },
        known ? [item.category, item.colour, fmt.price(item.price)].filter(Boolean).join(" · ") : "not in the served catalogue"),
      extra || null),
    action ? h("button", { type: "button", class: "btn btn-small", "aria-label": `${action.label}: ${item.title || item.item_id}`, onclick: () => action.run(item) }, action.label) : null);
}

/** Why an item was proposed: the first three reasons, the rest behind a disclosure. */
function reasonList(reasons) {
  if (!reasons || !reasons.length) return null;
  const shown = h("ul", { class: "reasons", "aria-label": "Why" }, reasons.slice(0, 3).map((r) => h("li", {}, r)));
  if (reasons.length <= 3) return shown;
  return [shown, h("details", { class: "more-reasons" }, h("summary", {}, `${reasons.length - 3} more`),
    h("ul", { class: "reasons" }, reasons.slice(3).map((r) => h("li", {}, r))))];
}

function cardGrid(items, options) {
  if (!items.length) return h("p", { class: "empty" }, "Nothing to show for these filters.");
  return h("div", { class: "card-grid" }, items.map((it) => itemCard(it, options && options(it))));
}

// ------------------------------------------------------------------------------- session store
function readSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_STORE) || "[]");
    return Array.isArray(s) ? s.filter((x) => x && typeof x.item_id === "string") : [];
  } catch {
    return [];
  }
}

function writeSession(items) {
  sessionStorage.setItem(SESSION_STORE, JSON.stringify(items.slice(0, MAX_SESSION)));
}

/** Put an item at the front of the visit (newest first); a repeat view moves it to the front. */
function viewInSession(item) {
  const s = readSession().filter((x) => x.item_id !== item.item_id);
  s.unshift({ item_id: item.item_id, title: item.title, category: item.category, colour: item.colour, price: item.price });
  writeSession(s);
}

// ------------------------------------------------------------------------------- facets
let facetsPromise = null;
function facets() {
  facetsPromise = facetsPromise || api("/items?limit=1").then((r) => r.facets).catch((e) => {
    facetsPromise = null;
    throw e;
  });
  return facetsPromise;
}

/** A labelled select; ``anyLabel`` null: no "any" choice. */
function select(name, label, values, current, anyLabel = "Any") {
  const id = `f-${name}`;
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    h("select", { id, name },
      anyLabel === null ? null : h("option", { value: "" }, anyLabel),
      values.map(([value, text]) => h("option", { value, selected: String(current ?? "") === String(value) }, text))));
}

// ------------------------------------------------------------------------------- pages
// Each route renders into a view of its own inside <main>. A page's render awaits the API; a
// render that a newer route overtook keeps writing into its own view, now detached, instead of
// replacing the page the user moved on to.
let currentView = null;
const main = () => currentView || document.getElementById("main");

function newView() {
  currentView = h("div", { class: "view" });
  replace(document.getElementById("main"), currentView);
  return currentView;
}

function pageHead(title, lead) {
  return h("div", { class: "page-head" }, h("h1", { tabindex: "-1", id: "page-title" }, title), lead ? h("p", { class: "lead" }, lead) : null);
}

async function renderShoppers(userId, params) {
  const root = main();
  const picker = h("form", { class: "picker", role: "search", id: "user-form" },
    h("div", { class: "field field-grow" },
      h("label", { for: "user-id" }, "Shopper id"),
      h("input", { id: "user-id", name: "user", list: "user-list", required: true, maxlength: 256, value: userId || "", placeholder: "e.g. a top shopper below", autocomplete: "off" })),
    h("button", { type: "submit", class: "btn btn-primary" }, "Show"),
    h("datalist", { id: "user-list" }));
  picker.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = picker.elements.user.value.trim();
    if (id) location.hash = `#/user/${encodeURIComponent(id)}${query(currentFilters(params))}`;
  });
  const examples = h("div", { class: "examples", id: "examples" }, loading("shoppers"));
  replace(root,
    pageHead(userId ? `Shopper ${userId}` : "Shoppers", userId ? null : "Pick or type a shopper to see what they bought beside what the API recommends to them."),
    h("section", { class: "panel", "aria-label": "Choose a shopper" }, picker, examples));

  api("/users?limit=12").then((r) => {
    replace(document.getElementById("user-list"), r.users.map((u) => h("option", { value: u.user_id })));
    replace(examples,
      h("span", { class: "examples-label" }, "Top shoppers"),
      h("ul", { class: "chips chips-links" }, r.users.map((u) =>
        h("li", {}, h("a", { class: `chip chip-link${u.user_id === userId ? " is-current" : ""}`, href: `#/user/${encodeURIComponent(u.user_id)}` },
          u.user_id, h("span", { class: "chip-note" }, `${fmt.int(u.purchases)} bought`))))));
  }).catch((e) => replace(examples, errorBox(e)));

  if (!userId) return;
  const history = h("aside", { class: "panel history", "aria-labelledby": "history-title" },
    h("h2", { id: "history-title" }, "History"), loading("history"));
  const recs = h("section", { class: "panel recs", "aria-labelledby": "recs-title" },
    h("h2", { id: "recs-title" }, "Recommendations"));
  append(root, h("div", { class: "split" }, history, recs));

  const form = h("form", { class: "filters", id: "filters", "aria-label": "Filters" }, loading("filters"));
  const meta = h("p", { class: "meta", id: "recs-meta" });
  const grid = h("div", { id: "recs" }, loading("recommendations"));
  append(recs, form, meta, grid);

  facets().then((f) => {
    replace(form,
      select("category", "Category", f.category.map((c) => [c, c]), params.get("category")),
      select("department", "Department", f.department.map((d) => [d, d]), params.get("department")),
      h("div", { class: "field" }, h("label", { for: "f-max_price" }, "Max price"),
        h("input", { id: "f-max_price", name: "max_price", type: "number", min: "0.01", step: "0.01", inputmode: "decimal", value: params.get("max_price") || "" })),
      select("in_stock", "Stock", [["true", "In stock"], ["false", "Out of stock"]], params.get("in_stock")),
      select("k", "Show", [["10", "10"], ["20", "20"], ["50", "50"]], params.get("k") || "10", null),
      h("div", { class: "field field-actions" },
        h("button", { type: "submit", class: "btn btn-primary" }, "Apply"),
        h("a", { class: "btn", href: `#/user/${encodeURIComponent(userId)}` }, "Clear")));
  }).catch((e) => replace(form, errorBox(e)));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    location.hash = `#/user/${encodeURIComponent(userId)}${query(data)}`;
  });

  const filters = currentFilters(params);
  const path = `/users/${encodeURIComponent(userId)}`;
  api(`${path}/recommendations${query({ k: params.get("k") || 10, ...filters })}`).then((r) => {
    const notes = [`${r.items.length} items`, `model ${r.model_version}`];
    if (r.fallback) notes.push("unknown shopper: the anonymous visitor's answer");
    if (r.degraded) notes.push("degraded: a dependency failed");
    const active = Object.entries(filters).map(([k, v]) => (k === "in_stock"
      ? (v === "true" ? "in stock" : "out of stock") : `${k.replace("_", " ")} ${v}`));
    replace(meta, notes.join(" · "), active.length ? h("span", { class: "active-filters" }, ` · filtered by ${active.join(", ")}`) : null);
    replace(grid, cardGrid(r.items));
  }).catch((e) => replace(grid, errorBox(e)));

  api(`${path}/history?limit=30`).then((r) => {
    const p = r.profile;
    const facts = [
      ["Age", p.age_bucket], ["Favourite category", p.fav_category], ["Favourite colour", p.fav_colour],
      ["Department", p.fav_department], ["Purchases", fmt.int(p.purchases_total)], ["Spend", fmt.price(p.spend_total)],
      ["Last event", fmt.when(r.last_event_at)],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "unknown");
    replace(history,
      h("h2", { id: "history-title" }, "History"),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      r.visit.length ? h("p", { class: "meta" }, `In a visit now: ${r.visit.length} item(s) viewed`) : null,
      h("h3", {}, "Bought ", h("span", { class: "sub" }, "most recent first")),
      rowList("history-purchases", r.purchases, "No purchases yet."),
      h("h3", {}, "Viewed ", h("span", { class: "sub" }, "most recent first")),
      rowList("history-views", r.recent_views, "No recent views."));
  }).catch((e) => {
    if (e instanceof ApiError && e.status === 404) {
      replace(history, h("h2", { id: "history-title" }, "History"),
        h("p", { class: "empty" }, "Nothing is known of this shopper yet: the recommendations are those of a new visitor."));
    } else replace(history, h("h2", { id: "history-title" }, "History"), errorBox(e));
  });
}

/** A list of item rows, the first ``shown`` visible and a button for the rest. */
function rowList(id, items, emptyText, shown = 8) {
  if (!items.length) return h("p", { class: "empty" }, emptyText);
  const list = h("ol", { class: "rows", id }, items.slice(0, shown).map((it) => itemRow(it)));
  if (items.length <= shown) return list;
  const more = h("button", { type: "button", class: "btn btn-small", "aria-controls": id, onclick: () => {
    append(list, items.slice(shown).map((it) => itemRow(it)));
    more.remove();
  } }, `Show all ${items.length}`);
  return [list, more];
}

function currentFilters(params) {
  const out = {};
  for (const k of ["category", "department", "max_price", "in_stock"]) {
    const v = params.get(k);
    if (v) out[k] = v;
  }
  return out;
}

async function renderItem(itemId) {
  const root = main();
  replace(root, pageHead("Item", null), loading("item"));
  let item;
  try {
    item = await api(`/items/${encodeURIComponent(itemId)}`);
  } catch (e) {
    replace(root, pageHead(`Item ${itemId}`, null), errorBox(e));
    return;
  }
  const tile = h("div", { class: "hero-tile", "aria-hidden": "true" }, h("span", { class: "tile-label" }, item.category || "item"));
  tile.style.setProperty("--swatch", cssColour(item.colour));
  const added = h("span", { class: "meta", role: "status" });
  const facts = [
    ["Id", item.item_id], ["Category", item.category], ["Department", item.department],
    ["Price", fmt.price(item.price)], ["Stock", item.in_stock ? "in stock" : "out of stock"],
    ["Purchases", `${fmt.int(item.purchases)} (recent ${fmt.int(item.recent_purchases)})`],
  ];
  replace(root,
    h("section", { class: "panel hero" }, tile,
      h("div", { class: "hero-body" },
        h("h1", { tabindex: "-1", id: "page-title" }, item.title || item.item_id),
        h("p", { class: "card-facts" }, h("span", { class: "colour" }, swatch(item.colour), item.colour || "colour n/a")),
        h("dl", { class: "facts facts-inline" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")])),
        h("div", { class: "actions" },
          h("button", { type: "button", class: "btn btn-primary", onclick: () => { viewInSession(item); replace(added, `Added to the session (${readSession().length} items).`); } }, "Add to session"),
          h("a", { class: "btn", href: "#/session" }, "Open the session simulator"),
          added))));

  const methods = h("div", { class: "methods", id: "similar" });
  append(root, h("section", { class: "section", "aria-labelledby": "similar-title" },
    h("h2", { id: "similar-title" }, "Similar items by method"), methods));
  for (const [method, label, what] of METHODS) {
    const list = h("div", { class: "method-body" }, loading(label.toLowerCase()));
    append(methods, h("section", { class: "panel method", "data-method": method, "aria-label": `${label} neighbours` },
      h("h3", {}, label), h("p", { class: "sub" }, what), list));
    api(`/items/${encodeURIComponent(itemId)}/similar?method=${method}&k=6`).then((r) => {
      replace(list,
        r.method !== method ? h("p", { class: "notice notice-info" }, `Nothing by ${method} for this item: answered by ${r.method}.`) : null,
        r.items.length ? h("ol", { class: "rows" }, r.items.map((it) => itemRow(it, {
          extra: h("span", { class: "row-why" }, `${fmt.score(it.score)} · ${(it.reasons || []).join(", ")}`),
        }))) : h("p", { class: "empty" }, "No neighbours."));
    }).catch((e) => replace(list, errorBox(e)));
  }

  const bt = h("div", { id: "bought-together" }, loading("bought together"));
  append(root, h("section", { class: "section", "aria-labelledby": "bt-title" },
    h("h2", { id: "bt-title" }, "Bought together"),
    h("p", { class: "lead" }, "Association rules mined from baskets: support is the share of baskets holding both, confidence the share of this item's baskets that hold the other, lift the confidence over the other item's overall share."),
    h("div", { class: "panel" }, bt)));
  api(`/items/${encodeURIComponent(itemId)}/bought-together?k=10`).then((r) => {
    if (!r.items.length) {
      replace(bt, h("p", { class: "empty" }, "No rule starts from this item (too few shared baskets)."));
      return;
    }
    replace(bt, h("div", { class: "table-wrap" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["Item", "Support", "Confidence", "Lift"].map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c)))),
      h("tbody", {}, r.items.map((it) => h("tr", { "data-item-id": it.item_id },
        h("td", {}, h("span", { class: "cell-item" }, swatch(it.colour), h("a", { href: `#/item/${encodeURIComponent(it.item_id)}` }, it.title || it.item_id))),
        h("td", { class: "num" }, fmt.share(it.support)),
        h("td", { class: "num" }, bar(it.confidence, 1), fmt.share(it.confidence)),
        h("td", { class: "num" }, Number(it.lift).toFixed(2))))))));
  }).catch((e) => replace(bt, errorBox(e)));
}

function bar(value, max) {
  const el = h("span", { class: "bar", "aria-hidden": "true" });
  const share = Math.max(0, Math.min(1, Number(value || 0) / (max || 1)));
  el.style.setProperty("--w", `${(share * 100).toFixed(1)}%`);
  return el;
}

// The last answer shown by the simulator, to mark what changed after each click.
let lastSessionAnswer = null;

async function renderSession() {
  const root = main();
  const searchForm = h("form", { class: "filters", role: "search", id: "catalogue-form" },
    h("div", { class: "field field-grow" }, h("label", { for: "cat-q" }, "Search the catalogue"),
      h("input", { id: "cat-q", name: "q", type: "search", maxlength: 256, placeholder: "title or id" })),
    h("div", { class: "field", id: "cat-category-field" }),
    h("div", { class: "field field-actions" }, h("button", { type: "submit", class: "btn" }, "Search")));
  const catalogue = h("div", { id: "catalogue" }, loading("catalogue"));
  const sessionList = h("div", { id: "session-items" });
  const recsMeta = h("p", { class: "meta", id: "session-meta", "aria-live": "polite" });
  const recs = h("div", { id: "session-recs" });
  const requestView = h("pre", { class: "code", id: "session-request" });
  replace(root,
    pageHead("Session simulator", "Browse as an anonymous visitor: each item you view goes to the front of the visit, and POST /recommendations answers for it (session_items newest first)."),
    h("div", { class: "three" },
      h("section", { class: "panel", "aria-labelledby": "cat-title" }, h("h2", { id: "cat-title" }, "Catalogue"), searchForm, catalogue),
      h("section", { class: "panel", "aria-labelledby": "visit-title" },
        h("div", { class: "panel-head" }, h("h2", { id: "visit-title" }, "This visit"),
          h("button", { type: "button", class: "btn btn-small", id: "session-clear", onclick: () => { writeSession([]); lastSessionAnswer = null; refresh(); } }, "Clear")),
        sessionList,
        h("details", { class: "request" }, h("summary", {}, "Request body"), requestView)),
      h("section", { class: "panel", "aria-labelledby": "next-title" }, h("h2", { id: "next-title" }, "Recommended next"), recsMeta, recs)));

  const view = { label: "View", run: (item) => { viewInSession(item); refresh(); } };
  let page = { q: "", category: "", offset: 0 };

  async function loadCatalogue(more) {
    const r = await api(`/items${query({ q: page.q, category: page.category, limit: 20, offset: page.offset })}`);
    const rows = r.items.map((it) => itemRow(it, { action: view }));
    const list = more ? catalogue.querySelector("ol") : h("ol", { class: "rows", id: "catalogue-list" });
    append(list, rows);
    const next = page.offset + r.items.length < r.total
      ? h("button", { type: "button", class: "btn btn-small", id: "catalogue-more", onclick: () => { page.offset += 20; loadCatalogue(true).catch((e) => append(catalogue, errorBox(e))); } }, "More") : null;
    replace(catalogue, h("p", { class: "meta" }, `${fmt.int(r.total)} items, most bought first`), r.total ? list : h("p", { class: "empty" }, "No item matches."), next);
  }

  facets().then((f) => {
    replace(document.getElementById("cat-category-field"),
      Array.from(select("category", "Category", f.category.map((c) => [c, c]), "").childNodes));
  }).catch(() => {});
  searchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(searchForm);
    page = { q: String(data.get("q") || ""), category: String(data.get("category") || ""), offset: 0 };
    loadCatalogue(false).catch((e) => replace(catalogue, errorBox(e)));
  });
  loadCatalogue(false).catch((e) => replace(catalogue, errorBox(e)));

  async function refresh() {
    const session = readSession();
    replace(sessionList, session.length
      ? h("ol", { class: "rows rows-timeline" }, session.map((it, i) => itemRow(it, {
        extra: h("span", { class: "row-why" }, i === 0 ? "newest" : `${i} earlier`),
        action: { label: "Remove", run: (x) => { writeSession(readSession().filter((y) => y.item_id !== x.item_id)); refresh(); } },
      })))
      : h("p", { class: "empty" }, "Nothing viewed yet: click View on an item."));
    const body = { session_items: session.map((x) => x.item_id), k: 10 };
    requestView.textContent = JSON.stringify(body, null, 2);
    recs.setAttribute("aria-busy", "true");
    try {
      const r = await api("/recommendations", { method: "POST", body });
      const before = new Set(lastSessionAnswer || []);
      const ids = r.items.map((x) => x.item_id);
      const fresh = lastSessionAnswer ? ids.filter((x) => !before.has(x)).length : 0;
      const notes = [session.length ? `${session.length} item(s) in the visit` : "empty visit: popular items (fallback)"];
      if (lastSessionAnswer) notes.push(fresh ? `${fresh} new since the last click` : "unchanged since the last click");
      replace(recsMeta, notes.join(" · "));
      recs.dataset.answer = ids.join(",");
      replace(recs, cardGrid(r.items, (it) => ({ action: view, isNew: lastSessionAnswer !== null && !before.has(it.item_id) })));
      lastSessionAnswer = ids;
    } catch (e) {
      replace(recs, errorBox(e));
    } finally {
      recs.removeAttribute("aria-busy");
    }
  }
  lastSessionAnswer = null;
  refresh();
}

async function renderModel() {
  const root = main();
  replace(root, pageHead("Model", "What this API serves, how it scored, the data it learnt from, and how to go back to an earlier index."), loading("the model"));
  let m;
  try {
    m = await api("/model");
  } catch (e) {
    append(root, errorBox(e));
    root.querySelector(".loading").remove();
    return;
  }
  root.querySelector(".loading").remove();
  const run = m.run || {};
  const data = run.data || {};
  const tc = run.train_config || {};
  const serving = h("section", { class: "panel", id: "model-run", "aria-labelledby": "run-title" },
    h("h2", { id: "run-title" }, "Current run"),
    h("p", { class: "run-id" }, h("code", {}, m.model_version)),
    m.artifacts_current && m.artifacts_current !== m.model_version
      ? h("p", { class: "notice notice-warn" }, `artifacts/current names ${m.artifacts_current}: this API serves the run of its collection alias.`) : null,
    h("dl", { class: "facts" }, [
      ["Trained", fmt.when(run.created_at)], ["Signal", data.signal], ["Events", data.purchases !== undefined ? `${fmt.int(data.purchases)} ${data.signal || ""}s` : null],
      ["Held out", data.evaluation], ["Data from", fmt.when(data.start)], ["to", fmt.when(data.end)],
      ["Sources", (m.sources || []).join(", ")], ["Session sources", (m.session_sources || []).join(", ") || "none"],
      ["item2vec run", m.item2vec_run || "none"],
      ["Two-tower", tc.dim ? `dim ${tc.dim}, ${tc.epochs} epochs on ${(tc.train_events || []).join(" + ")} events` : null],
      ["Rankers", ["ranking", "sessions"].filter((p) => run[p]).map((p) => `${p === "ranking" ? "user" : "session"}: ${run[p].features} features`).join(" · ")],
    ].filter(([, v]) => v).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));

  const metrics = run.metrics || {};
  const rows = Object.entries(metrics).filter(([, v]) => v && typeof v === "object" && "recall@10" in v);
  const best = Math.max(0.0001, ...rows.map(([, v]) => Number(v["recall@10"] || 0)));
  const training = h("section", { class: "panel", id: "run-metrics", "aria-labelledby": "metrics-title" },
    h("h2", { id: "metrics-title" }, "Training metrics ", h("span", { class: "sub" }, `held-out week, k=${metrics.k ?? 10}`)),
    rows.length ? h("div", { class: "table-wrap" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "model"), h("th", { scope: "col", class: "num" }, "recall@10"), h("th", { scope: "col", class: "num" }, "ndcg@10"), h("th", { scope: "col", class: "num" }, "users"))),
      h("tbody", {}, rows.map(([name, v]) => h("tr", {},
        h("th", { scope: "row" }, name.replace(/_/g, " ")),
        h("td", { class: "num" }, bar(v["recall@10"], best), fmt.metric(v["recall@10"])),
        h("td", { class: "num" }, fmt.metric(v["ndcg@10"])),
        h("td", { class: "num" }, fmt.int(v.users))))))) : h("p", { class: "empty" }, "This run's manifest has no metrics."),
    ["ranking", "sessions"].map((p) => rankerTable(p, run[p])));

  append(root,
    h("div", { class: "model-grid" }, h("div", { class: "stack" }, serving, validationPanel(m.validation)), training),
    evaluationPanel(m.evaluation),
    aliasPanel(m.aliases));
}

function rankerTable(name, part) {
  if (!part || !part["valid_ndcg@10_vs_sources"]) return null;
  const entries = Object.entries(part["valid_ndcg@10_vs_sources"]);
  const best = Math.max(0.0001, ...entries.map(([, v]) => Number(v)));
  return h("div", { class: "subsection" },
    h("h3", {}, name === "ranking" ? "User pipeline: ranker vs each source" : "Session pipeline: ranker vs each source",
      h("span", { class: "sub" }, " validation ndcg@10")),
    h("ul", { class: "bars" }, entries.map(([k, v]) => h("li", { class: k === "ranker" ? "is-ranker" : null },
      h("span", { class: "bar-label" }, k), bar(v, best), h("span", { class: "bar-value" }, fmt.metric(v))))));
}

function evaluationPanel(ev) {
  const panel = h("section", { class: "panel", id: "evaluation", "aria-labelledby": "eval-title" }, h("h2", { id: "eval-title" }, "Evaluation"));
  if (!ev) return append(panel, h("p", { class: "empty" }, "Not evaluated yet: run ", h("code", {}, "recsys evaluate"), " to score the served pipeline against its peers."));
  const best = {};
  for (const c of ev.columns) best[c] = Math.max(...ev.rows.map((r) => Number(r.metrics[c] ?? -1)));
  return append(panel,
    h("p", { class: "meta" }, `${ev.split || "?"} split on ${ev.events || "?"} events, ${fmt.int(ev.eval_users)} users · ${fmt.when(ev.created_at)}`),
    ev.stale ? h("p", { class: "notice notice-warn" }, `This evaluation scored run ${ev.served_run}, not the one served: run recsys evaluate again.`) : null,
    h("div", { class: "table-wrap" }, h("table", { class: "table table-compact" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "model"), ev.columns.map((c) => h("th", { scope: "col", class: "num" }, c)))),
      h("tbody", {}, ev.rows.map((r) => h("tr", { class: r.model === "served pipeline" ? "is-served" : null },
        h("th", { scope: "row" }, r.model.replace(/_/g, " ")),
        r.error ? h("td", { colspan: ev.columns.length }, r.error)
          : ev.columns.map((c) => h("td", { class: `num${r.metrics[c] !== null && r.metrics[c] === best[c] ? " is-best" : ""}` }, fmt.metric(r.metrics[c])))))))),
    Object.keys(ev.top10_source_share || {}).length
      ? h("p", { class: "meta" }, "Served top-10 by source: ", Object.entries(ev.top10_source_share).map(([k, v]) => `${k} ${fmt.share(v)}`).join(" · ")) : null);
}

function validationPanel(v) {
  const panel = h("section", { class: "panel", id: "validation", "aria-labelledby": "val-title" }, h("h2", { id: "val-title" }, "Last validation"));
  if (!v) return append(panel, h("p", { class: "empty" }, "No validation yet: run ", h("code", {}, "recsys validate"), "."));
  return append(panel,
    h("p", { class: "meta" }, h("span", { class: `pill ${v.success ? "pill-ok" : "pill-bad"}` }, v.success ? "passed" : "failed"), ` ${fmt.when(v.validated_at)}`),
    h("div", { class: "table-wrap" }, h("table", { class: "table table-compact" },
      h("thead", {}, h("tr", {}, ["table", "expectations", "valid rows", "quarantined", ""].map((c, i) => h("th", { scope: "col", class: i && i < 4 ? "num" : null }, c)))),
      h("tbody", {}, v.tables.map((t) => h("tr", {},
        h("th", { scope: "row" }, t.table),
        h("td", { class: "num" }, `${fmt.int(t.passed)}/${fmt.int(t.expectations)}`, t.failed ? h("span", { class: "pill pill-bad" }, `${t.failed} failed`) : null),
        h("td", { class: "num" }, fmt.int(t.rows_valid)),
        h("td", { class: "num" }, fmt.int(t.rows_quarantined)),
        h("td", {}, t.page ? h("a", { href: t.page, target: "_blank", rel: "noopener" }, "report") : null)))))),
    v.data_docs ? h("p", {}, h("a", { class: "btn", href: v.data_docs, target: "_blank", rel: "noopener", id: "data-docs-link" }, "Open the Data Docs")) : null);
}

function aliasPanel(a) {
  const panel = h("section", { class: "panel", id: "aliases", "aria-labelledby": "alias-title" },
    h("h2", { id: "alias-title" }, "Index alias ", h("code", {}, a.alias)),
    h("p", { class: "lead" }, "Each move of the alias that serving reads. Rolling back is an operator's command, shown here and never run by the console."));
  if (a.error) return append(panel, h("p", { class: "notice notice-error" }, a.error));
  if (!a.history.length) return append(panel, h("p", { class: "empty" }, "Nothing indexed yet: run ", h("code", {}, "recsys index"), "."));
  append(panel, h("div", { class: "table-wrap" }, h("table", { class: "table" },
    h("thead", {}, h("tr", {}, ["collection", "model run", "moved at", "roll back with"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, a.history.map((e) => h("tr", { class: e.current ? "is-served" : null },
      h("td", {}, h("code", {}, e.collection),
        e.current ? h("span", { class: "pill pill-ok" }, "current") : null,
        e.collection === a.serving ? h("span", { class: "pill pill-ok" }, "served") : null,
        e.exists ? null : h("span", { class: "pill" }, "pruned")),
      h("td", {}, e.run_id || "–"),
      h("td", {}, fmt.when(e.at)),
      h("td", {}, e.rollback_command ? commandBox(e.rollback_command) : e.current ? "(live)" : "–")))))));
  if (a.serving && a.current && a.serving !== a.current) {
    append(panel, h("p", { class: "notice notice-warn" }, `This API still searches ${a.serving}; it loads ${a.current} in the background and switches at its next request.`));
  }
  if (a.rollback_default) {
    append(panel, h("p", { class: "meta" }, "Back to the previous collection (", h("code", {}, a.rollback_default_target), "): ", commandBox(a.rollback_default)));
  }
  return panel;
}

function commandBox(command) {
  const status = h("span", { class: "sr-only", role: "status" });
  return h("span", { class: "command" }, h("code", { class: "rollback-command" }, command),
    h("button", { type: "button", class: "btn btn-small", "aria-label": `Copy: ${command}`, onclick: async () => {
      try {
        await navigator.clipboard.writeText(command);
        status.textContent = "Copied";
      } catch {
        status.textContent = "Copy failed: select the command instead";
      }
    } }, "Copy"), status);
}

// ------------------------------------------------------------------------------- router
function parseRoute() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [path, search] = raw.split("?");
  const [page, ...rest] = path.split("/");
  return { page: page || "user", id: rest.length ? decodeURIComponent(rest.join("/")) : null, params: new URLSearchParams(search || "") };
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // in-page anchors (skip link)
  const { page, id, params } = parseRoute();
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const pages = {
    user: () => renderShoppers(id, params),
    item: () => (id ? renderItem(id) : renderShoppers(null, params)),
    session: () => renderSession(),
    model: () => renderModel(),
  };
  const render = pages[page] || (() => replace(main(), pageHead("Not found", `No page ${page}: use the links above.`)));
  document.title = `${page === "user" && id ? id : page[0].toUpperCase() + page.slice(1)} · Recommendations console`;
  const view = newView();
  await render();
  if (view !== currentView) return; // overtaken by a newer route: it moves the focus
  const title = document.getElementById("page-title");
  if (title && routed) title.focus({ preventScroll: false }); // keyboard users land on the new page
  routed = true;
}
let routed = false;

async function showStatus() {
  const el = document.getElementById("status");
  try {
    const res = await fetch("/health", { headers: { Accept: "application/json" } });
    const body = await res.json();
    replace(el, h("span", { class: `dot ${body.ok ? "dot-ok" : "dot-bad"}`, "aria-hidden": "true" }),
      body.ok ? "healthy" : "degraded", " · model ", h("code", {}, body.model ? body.model.version : "?"));
  } catch {
    replace(el, h("span", { class: "dot dot-bad", "aria-hidden": "true" }), "API unreachable");
  }
}

function setupKey() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = localStorage.getItem(KEY_STORE) || "";
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
    facetsPromise = null;
    document.getElementById("keybox").open = false;
    route();
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    input.value = "";
    facetsPromise = null;
    route();
  });
}

document.getElementById("skip-link").addEventListener("click", (ev) => {
  ev.preventDefault(); // the hash is the router's: move focus without changing it
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", route);
setupKey();
showStatus();
route();
