// The QR code of a payment that answers with one (WeChat Native, Alipay precreate), drawn in
// the browser as a data: image. The generator (vendored, MIT) loads only when a QR is shown.
export async function qrImage(content, alt) {
  const { qrcode } = await import("../vendor/qrcode-generator/qrcode.js");
  const code = qrcode(0, "M"); // 0: the smallest version that fits; M: survives a smudged screen
  code.addData(content);
  code.make();
  const img = document.createElement("img");
  img.src = code.createDataURL(6, 16);
  img.alt = alt;
  img.className = "qr";
  img.width = img.height = code.getModuleCount() * 6 + 32;
  return img;
}
