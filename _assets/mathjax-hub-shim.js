// The Jupyter widgets manager typesets widget labels with MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); this site runs MathJax 3, which has no Hub.
// Forward the old call to MathJax 3's typesetPromise. Installed once the deferred MathJax script
// has run (DOMContentLoaded), before the widget manager renders anything.
(function () {
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function () {
        var target = [];
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) target.push(job[2]);
        }
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        return ready.then(function () {
          return mj.typesetPromise ? mj.typesetPromise(target.length ? target : undefined) : null;
        });
      },
    };
  }
  document.addEventListener("DOMContentLoaded", install);
  install();
})();
