import { api } from "./api.js";
import { $, el, replaceChildren, safeUrl } from "./dom.js";
import { dateTime, errorText, money } from "./format.js";
import { t } from "./i18n.js";
import { keyList } from "./keys.js";
import { pathArg, startPage } from "./page.js";
import { rememberedPayment } from "./payment.js";
import { qrImage } from "./qr.js";

const orderNo = pathArg();
const token = new URLSearchParams(location.search).get("token") || "";
const orderPath = `/delivery/v1/orders/${encodeURIComponent(orderNo)}`;
const withToken = { token };

// Nothing more will happen to these by itself: polling stops.
const FINAL = new Set(["delivered", "partially_refunded", "refunded", "expired", "rejected"]);
const SETTLED_REPORTS = new Set(["replaced", "resolved", "rejected", "dismissed", "closed"]);
const FAST_MS = 2000;
const FAST_FOR_MS = 60_000; // every 2 s while a payment is likely landing, then slower
const SLOW_MAX_MS = 15_000;
// A reported key may be replaced by the merchant: looked at again after 5 s, then less often.
const REPORT_FIRST_MS = 5000;
const REPORT_SLOW_MAX_MS = 60_000;
// A paid order is normally delivered within a second; one still "paid" after this is being
// reviewed (risk) — the view does not say so, the wait does.
const REVIEW_AFTER_MS = 20_000;

let view = null;
let missing = false;
let drawn = "";
let timer = null;
let delay = FAST_MS;
const startedAt = Date.now();
const drafts = new Map(); // key index → {open, text}: a half-written report survives a redraw
let reportNotice = ""; // a string key: it is worded again after a language switch

function statusWord(current) {
  if (current.status === "paid" && current.paid_at && Date.now() - Date.parse(current.paid_at) > REVIEW_AFTER_MS) {
    return "paid_review";
  }
  return current.status;
}

function draw(force = false) {
  const signature = JSON.stringify([view, missing, statusWord(view || {}), reportNotice]);
  if (!force && signature === drawn) return; // unchanged: keep focus and the reader's place
  drawn = signature;
  const root = $("#order");
  if (missing) {
    document.title = `${t("order.missing_title")} · Linkshop`;
    return replaceChildren(root,
      el("h1", { text: t("order.missing_title") }),
      el("p", { text: t("order.missing_text") }),
      el("p", {}, el("a", { href: "/lookup", class: "button", text: t("nav.lookup") })));
  }
  if (!view) return replaceChildren(root, el("p", { text: t("list.loading") }));
  const word = statusWord(view);
  replaceChildren(root,
    el("h1", { text: t("order.title") }),
    el("p", { class: "order-no" }, el("span", { text: `${t("order.number")} ` }), el("span", { class: "wrap", text: view.order_no })),
    el("div", { class: `status status-${view.status}`, role: "status" },
      el("p", { class: "status-word", text: t(`status.${word}`) }),
      el("p", { class: "hint", text: t(`status_hint.${word}`) })),
    summary(),
    view.status === "pending" ? paySection() : null,
    view.keys && view.keys.length ? keysSection() : null,
    refundsSection());
}

function summary() {
  return el("dl", { class: "summary" },
    el("dt", { text: t("order.product") }), el("dd", { text: `${view.title || ""} × ${view.quantity}` }),
    el("dt", { text: t("order.amount") }), el("dd", { text: money(view.amount_cents, view.currency) }),
    el("dt", { text: t("order.created") }), el("dd", { text: dateTime(view.created_at) }));
}

function paySection() {
  const payment = rememberedPayment(view.order_no);
  const section = el("section", { class: "pay" }, el("h2", { text: t("order.pay_title") }));
  const payUrl = safeUrl(payment?.pay_url);
  if (payment?.qr_code) {
    const holder = el("div", { class: "qr-holder" });
    qrImage(payment.qr_code, t("order.qr_alt")).then((img) => holder.replaceChildren(img));
    section.append(
      el("p", { class: "pay-amount", text: money(view.amount_cents, view.currency) }),
      holder,
      el("p", { class: "hint", text: t("order.qr_hint") }));
  } else if (payUrl) {
    section.append(el("a", { class: "button primary", href: payUrl, text: t("order.pay_now") }));
  } else {
    section.append(el("p", { class: "hint", text: t("order.pay_elsewhere") }));
  }
  section.append(el("p", { class: "hint", text: t("order.expires", { time: dateTime(view.expires_at) }) }));
  return section;
}

function keysSection() {
  return el("section", { class: "delivered" },
    el("h2", { text: t("keys.title", { n: view.keys.length }) }),
    keyList(view.order_no, view.keys, { reportForm }),
    reportNotice ? el("p", { class: "notice", role: "status", text: t(reportNotice) }) : null,
    view.instructions ? el("h2", { text: t("order.instructions") }) : null,
    view.instructions ? el("p", { class: "prose", text: view.instructions }) : null);
}

function reportsOf(index) {
  return (view.reports || []).filter((report) => report.key_index === index);
}

// "Report a bad key": a reason, sent to the merchant; its state shows until it is settled.
function reportForm(index) {
  const reports = reportsOf(index);
  const last = reports[reports.length - 1];
  const box = el("div", { class: "report" });
  if (last) {
    box.append(el("p", { class: "hint", text: t("report.state", { status: reportStatus(last.status) }) }));
    if (!SETTLED_REPORTS.has(last.status)) return box;
  }
  const draft = drafts.get(index) || { open: false, text: "" };
  const toggle = el("button", { type: "button", class: "small link-button", "aria-expanded": String(draft.open),
    text: t("report.open") });
  toggle.addEventListener("click", () => {
    drafts.set(index, { ...draft, open: !draft.open });
    draw(true);
    if (!draft.open) $(`#reason-${index}`)?.focus();
  });
  box.append(toggle);
  if (!draft.open) return box;
  const reason = el("textarea", { id: `reason-${index}`, rows: "3", maxlength: "500", required: true });
  reason.value = draft.text;
  reason.addEventListener("input", () => drafts.set(index, { open: true, text: reason.value }));
  const error = el("p", { class: "field-error", id: `reason-${index}-error`, role: "alert" });
  reason.setAttribute("aria-describedby", error.id);
  const form = el("form", { class: "report-form" },
    el("label", { for: reason.id, text: t("report.reason", { n: index + 1 }) }), reason, error,
    el("button", { type: "submit", text: t("report.send") }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = reason.value.trim();
    if (!text) return void (error.textContent = t("report.reason_required"));
    const answer = await api(`${orderPath}/reports`, { method: "POST", query: withToken, body: { key_index: index, reason: text } });
    if (!answer.ok) return void (error.textContent = errorText(answer.error));
    drafts.delete(index);
    view = { ...view, reports: [...(view.reports || []), answer.data] };
    reportNotice = "report.sent";
    draw(true);
    schedule();
  });
  box.append(form);
  return box;
}

function reportStatus(status) {
  const key = `report.status_${status}`;
  const word = t(key);
  return word === key ? status : word;
}

function refundsSection() {
  const refunds = view.refunds || [];
  if (!refunds.length) return null;
  return el("section", { class: "refunds" },
    el("h2", { text: t("refund.title") }),
    el("ul", {}, refunds.map((refund) => el("li", {},
      el("span", { text: `${money(refund.amount_cents, view.currency)} (${t("refund.quantity", { n: refund.quantity })}) ` }),
      el("span", { class: `refund-${refund.status}`, text: t(`refund.status_${refund.status}`) })))));
}

function watching() {
  if (!view) return true;
  if (!FINAL.has(view.status)) return true;
  return (view.reports || []).some((report) => !SETTLED_REPORTS.has(report.status));
}

function schedule(failed = false) {
  clearTimeout(timer);
  if (missing || !watching()) return;
  if (view && FINAL.has(view.status)) delay = delay < REPORT_FIRST_MS ? REPORT_FIRST_MS : Math.min(delay * 1.5, REPORT_SLOW_MAX_MS);
  else if (failed) delay = Math.min(delay * 2, 30_000);
  else if (Date.now() - startedAt < FAST_FOR_MS) delay = FAST_MS;
  else delay = Math.min(delay * 1.5, SLOW_MAX_MS);
  timer = setTimeout(poll, delay);
}

async function poll() {
  if (document.hidden) return schedule(); // a tab in the background asks nothing
  const answer = await api(orderPath, { query: withToken });
  take(answer);
  schedule(!answer.ok);
}

function take(answer) {
  if (answer.status === 404) missing = true;
  else if (answer.ok) view = answer.data;
  draw();
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && watching() && !missing) poll();
});

startPage(async () => {
  if (view || missing) return draw(true);
  if (!token) {
    missing = true;
    return draw(true);
  }
  const first = await api(orderPath, { query: withToken });
  take(first);
  // The buyer may be back from paying before the provider's notice: ask delivery to check now.
  if (first.ok && ["pending", "expired"].includes(first.data.status)) {
    const checked = await api(`${orderPath}/payment/check`, { method: "POST", query: withToken });
    if (checked.ok) take(checked);
  }
  schedule(!first.ok);
});
