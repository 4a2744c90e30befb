import { api } from "./api.js";
import { $ } from "./dom.js";
import { errorText } from "./format.js";
import { t } from "./i18n.js";
import { pathArg, startPage } from "./page.js";
import { productList } from "./products.js";

const merchantId = pathArg();
const list = productList($("#products"), $("#list-status"), $("#more"));
let shop = null;
let error = null;

function drawName() {
  const heading = $("#shop-name");
  if (shop) heading.textContent = shop.name;
  else heading.textContent = error && error.code === "not_found" ? t("shop.not_found") : t("shop.title");
  document.title = `${heading.textContent} · Linkshop`;
}

startPage(async () => {
  if (shop || error) {
    drawName();
    return list.draw();
  }
  const answer = await api(`/catalog/v1/shops/${encodeURIComponent(merchantId)}`);
  if (answer.ok) shop = answer.data;
  else error = answer.error;
  drawName();
  if (error && error.code === "not_found") {
    $("#list-status").textContent = t("shop.not_found_hint");
    return;
  }
  if (error) $("#list-status").textContent = errorText(error);
  await list.load({ merchant_id: merchantId });
});
