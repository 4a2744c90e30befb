import { api } from "./api.js";
import { $, el, replaceChildren, safeUrl } from "./dom.js";
import { errorText, money, stockState } from "./format.js";
import { currentLocale, t } from "./i18n.js";
import { pathArg, startPage } from "./page.js";
import { choiceLabel, loadChoices, orderPage, rememberPayment } from "./payment.js";

const productId = pathArg();
const form = $("#buy");
const FIELDS = ["email", "quantity", "query_password", "provider"];
let product = null;
let choices = [];
let missing = false;

function drawProduct() {
  if (!product) {
    $("#page-status").textContent = missing ? t("product.not_found") : t("list.loading");
    return;
  }
  $("#page-status").textContent = "";
  $("#product").hidden = false;
  document.title = `${product.title} · Linkshop`;
  $("#title").textContent = product.title;
  $("#price").textContent = money(product.price_cents, product.currency);
  const stock = stockState(product);
  $("#stock").textContent = stock.text;
  $("#stock").className = `stock stock-${stock.state}`;
  $("#description").textContent = product.description || "";
  $("#description-section").hidden = !product.description;
  $("#instructions").textContent = product.instructions || "";
  $("#instructions-section").hidden = !product.instructions;
  const quantity = $("#quantity");
  quantity.max = String(maxQuantity());
  $("#quantity-hint").textContent = t("buy.quantity_hint", { n: maxQuantity() });
  $("#buy-button").textContent = t(stock.state === "out" ? "buy.sold_out" : "buy.submit");
  $("#buy-button").disabled = stock.state === "out";
  drawChoices();
  drawTotal();
}

function maxQuantity() {
  const limit = product.max_per_order || 1;
  return product.stock_unlimited || product.stock === null ? limit : Math.max(1, Math.min(limit, product.stock));
}

function drawChoices() {
  const checked = Number(form.querySelector("input[name=payment]:checked")?.value || 0);
  replaceChildren($("#payment-choices"), choices.map((choice, index) =>
    el("label", { class: "choice" },
      el("input", { type: "radio", name: "payment", value: String(index), checked: index === checked }),
      el("span", { text: choice.provider ? choiceLabel(choice) : t("buy.default_payment") }))));
}

function drawTotal() {
  const quantity = Number($("#quantity").value) || 1;
  $("#total").textContent = money(product.price_cents * quantity, product.currency);
}

function showFieldErrors(fields) {
  let first = null;
  for (const name of FIELDS) {
    const message = fields[name] || (name === "provider" ? fields.pay_type : null);
    const box = $(`#${name}-error`);
    box.textContent = message ? fieldMessage(name, message) : "";
    const input = name === "provider" ? null : $(`#${name}`);
    if (input) input.setAttribute("aria-invalid", message ? "true" : "false");
    if (message && !first) first = input || form.querySelector("input[name=payment]");
  }
  if (first) first.focus();
  return first !== null;
}

// Our own words for the fields we know; otherwise the service's (English) message.
function fieldMessage(name, message) {
  const key = `buy.invalid_${name}`;
  const ours = t(key, { n: product ? maxQuantity() : 1 });
  return ours !== key ? ours : [message].flat().join(" ");
}

function validate(body) {
  const fields = {};
  if (!$("#email").checkValidity() || !body.email) fields.email = "invalid";
  if (!Number.isInteger(body.quantity) || body.quantity < 1 || body.quantity > maxQuantity()) fields.quantity = "invalid";
  if (body.query_password !== undefined && body.query_password.length < 8) fields.query_password = "invalid";
  return fields;
}

async function submit(event) {
  event.preventDefault();
  const choice = choices[Number(form.querySelector("input[name=payment]:checked")?.value || 0)] || {};
  const body = {
    product_id: product.id, quantity: Number($("#quantity").value), email: $("#email").value.trim(),
    locale: currentLocale(),
  };
  const password = $("#query_password").value;
  if (password) body.query_password = password;
  if (choice.provider) body.provider = choice.provider;
  if (choice.pay_type) body.pay_type = choice.pay_type;
  $("#buy-error").textContent = "";
  if (showFieldErrors(validate(body))) return;
  const button = $("#buy-button");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = t("buy.submitting");
  let answer = await api("/delivery/v1/orders", { method: "POST", body });
  if (!answer.ok && answer.error.fields && Object.keys(answer.error.fields).join() === "locale") {
    delete body.locale; // a delivery that does not take the buyer's language yet
    answer = await api("/delivery/v1/orders", { method: "POST", body });
  }
  if (answer.ok) return pay(answer.data);
  button.disabled = false;
  button.removeAttribute("aria-busy");
  button.textContent = t("buy.submit");
  if (!showFieldErrors(answer.error.fields || {})) $("#buy-error").textContent = errorText(answer.error);
}

// A pay_url is a page to pay on; a QR code is shown on the order page, which follows the order
// while the buyer scans it and shows the keys there once paid.
function pay(order) {
  rememberPayment(order);
  const payUrl = safeUrl(order.payment?.pay_url);
  location.assign(payUrl && !order.payment?.qr_code ? payUrl : orderPage(order.order_no, order.access_token));
}

form.addEventListener("submit", submit);
$("#quantity").addEventListener("input", () => product && drawTotal());

startPage(async () => {
  if (!product && !missing) {
    const [answer, loaded] = await Promise.all([
      api(`/catalog/v1/products/${encodeURIComponent(productId)}`), loadChoices()]);
    choices = loaded;
    if (answer.ok) product = answer.data;
    else if (answer.status === 404) missing = true;
    else return void ($("#page-status").textContent = errorText(answer.error));
  }
  drawProduct();
});
