import { api } from "./api.js";
import { $, el, replaceChildren } from "./dom.js";
import { dateTime, errorText, money } from "./format.js";
import { t } from "./i18n.js";
import { keyList } from "./keys.js";
import { startPage } from "./page.js";

const form = $("#lookup");
let orders = null; // the last answer, redrawn after a language switch

function orderCard(order) {
  const hasKeys = order.keys && order.keys.length > 0;
  return el("li", { class: "card order-card" },
    el("p", { class: "order-no" }, el("span", { text: `${t("order.number")} ` }), el("span", { class: "wrap", text: order.order_no })),
    el("dl", { class: "summary" },
      el("dt", { text: t("order.product") }), el("dd", { text: `${order.title || ""} × ${order.quantity}` }),
      el("dt", { text: t("order.amount") }), el("dd", { text: money(order.amount_cents, order.currency) }),
      el("dt", { text: t("order.status") }), el("dd", { text: t(`status.${order.status}`) }),
      el("dt", { text: t("order.created") }), el("dd", { text: dateTime(order.created_at) })),
    hasKeys ? keyList(order.order_no, order.keys) : null,
    hasKeys && order.instructions ? el("p", { class: "prose", text: order.instructions }) : null,
    // Without the order number and its query password an answer carries no keys.
    !hasKeys && order.status === "delivered" ? el("p", { class: "hint", text: t("lookup.locked") }) : null);
}

function drawResults() {
  const box = $("#results");
  if (orders === null) return replaceChildren(box);
  if (!orders.length) return replaceChildren(box, el("p", { role: "status", text: t("lookup.none") }));
  replaceChildren(box,
    el("p", { role: "status", text: t("lookup.found", { n: orders.length }) }),
    el("ul", { class: "cards" }, orders.map(orderCard)));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $("#email");
  $("#email-error").textContent = "";
  $("#lookup-error").textContent = "";
  if (!email.value.trim() || !email.checkValidity()) {
    $("#email-error").textContent = t("buy.invalid_email");
    email.setAttribute("aria-invalid", "true");
    return email.focus();
  }
  email.setAttribute("aria-invalid", "false");
  const body = { email: email.value.trim() };
  const orderNo = $("#order_no").value.trim();
  const password = $("#query_password").value;
  if (orderNo) body.order_no = orderNo;
  if (password) body.query_password = password;
  const button = $("#lookup-button");
  button.disabled = true;
  const answer = await api("/delivery/v1/orders/lookup", { method: "POST", body });
  button.disabled = false;
  if (!answer.ok) {
    orders = null;
    drawResults();
    $("#lookup-error").textContent = errorText(answer.error);
    return;
  }
  orders = answer.data.orders;
  drawResults();
});

startPage(async () => drawResults());
