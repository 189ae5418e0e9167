/* latentbook: accessibility repairs for what the site's pages are built from but we do not write
 * (tests/test_accessibility.py runs axe-core on every page, at 1280 and 390 px).
 *
 * - The first frame of an interactive figure (an ipywidgets Output, drawn by the vendored widget
 *   manager) is an <img> with no alt: give it one naming what it shows, the controls' settings.
 * - The widget sliders' handles (role="slider") have no accessible name: name them after the
 *   slider's visible label ("z₁", "percentile", ...).
 * - The theme's search field is named "Search" but shows "Search Ctrl+K": name it by what it shows
 *   (WCAG 2.5.3, label in name), and declare the shortcut.
 * - Bibliography entries (docutils) carry the deprecated role doc-biblioentry inside a role="list":
 *   make them list items.
 * Everything here only adds attributes; it changes nothing a sighted reader sees.
 */
(function () {
  "use strict";

  function text(el) { return (el && el.textContent || "").replace(/\s+/g, " ").trim(); }

  function settings(box) {  // "k = 87, noise = Gaussian": the controls of an interactive widget
    var out = [];
    box.querySelectorAll(".widget-slider, .widget-dropdown, .widget-inline-hbox").forEach(function (w) {
      var label = text(w.querySelector(".widget-label"));
      var readout = w.querySelector(".widget-readout, select");
      var value = readout ? (readout.tagName === "SELECT"
        ? text(readout.options[readout.selectedIndex]) : text(readout)) : "";
      if (label && value && out.indexOf(label + " = " + value) < 0) out.push(label + " = " + value);
    });
    return out.join(", ");
  }

  function repair(scope) {
    scope.querySelectorAll(".jupyter-widgets img:not([alt])").forEach(function (img) {
      var box = img.closest(".widget-interact, .widget-vbox") || img.closest(".cell_output");
      var set = box ? settings(box) : "";
      img.alt = "The interactive figure as first drawn" + (set ? ", at " + set : "") +
        " (the text before it describes it; with a running kernel the controls redraw it)";
    });
    scope.querySelectorAll('.jupyter-widgets [role="slider"]:not([aria-label])').forEach(function (h) {
      var w = h.closest(".widget-slider");
      var label = w && text(w.querySelector(".widget-label"));
      if (label) h.setAttribute("aria-label", label);
    });
    scope.querySelectorAll(".jupyter-widgets select:not([aria-label])").forEach(function (s) {
      var w = s.closest(".widget-dropdown");
      var label = w && text(w.querySelector(".widget-label"));
      if (label) s.setAttribute("aria-label", label);
    });
    // docutils marks bibliography entries doc-biblioentry, a role ARIA deprecated, inside a
    // role="list": assistive technology (and axe) then finds a list without items
    scope.querySelectorAll('[role="list"] > [role="doc-biblioentry"]').forEach(function (e) {
      e.setAttribute("role", "listitem");
    });
    scope.querySelectorAll(".search-button-field").forEach(function (b) {
      var shown = text(b);
      if (shown && b.getAttribute("aria-label") !== shown) {
        b.setAttribute("aria-label", shown);
        b.setAttribute("aria-keyshortcuts", "Control+K");
      }
    });
  }

  function start() {
    repair(document);
    // widgets are drawn after the page loads, by require.js: repair what they add
    new MutationObserver(function (changes) {
      for (var i = 0; i < changes.length; i++) {
        if (changes[i].addedNodes.length) { repair(document); return; }
      }
    }).observe(document.body, { childList: true, subtree: true });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
