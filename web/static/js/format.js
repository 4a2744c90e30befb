import { currentLocale, t } from "./i18n.js";

// Prices travel as integer cents; the buyer's language decides how they read (¥12.34, CN¥12.34).
export function money(cents, currency) {
  try {
    return new Intl.NumberFormat(currentLocale(), { style: "currency", currency }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency}`; // an unknown currency code
  }
}

export function dateTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return new Intl.DateTimeFormat(currentLocale(), { dateStyle: "medium", timeStyle: "short" }).format(date);
}

// One word for a product's stock: sold out, low (with the count when known) or in stock.
export function stockState(product) {
  if (product.stock_unlimited) return { state: "in", text: t("stock.in") };
  if (!product.stock) return { state: "out", text: t("stock.out") };
  if (product.stock_low) return { state: "low", text: t("stock.low", { n: product.stock }) };
  return { state: "in", text: t("stock.in") };
}

export function errorText(error) {
  const key = `error.${error.code}`;
  const text = t(key);
  return text === key ? t("error.generic") : text;
}
