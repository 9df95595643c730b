(function () {
  var data = JSON.parse(document.getElementById("activations").textContent);
  var select = document.getElementById("unit");
  var spans = document.querySelectorAll("#neurons .ch");
  var buttons = document.querySelectorAll("button.unit");
  function shade(unit) {
    var values = data.units[unit];
    for (var i = 0; i < spans.length; i++) {
      var v = values[i];
      if (v === null) { spans[i].style.background = ""; continue; }
      var a = Math.min(1, Math.abs(v) / data.scale / data.range) * 0.8;
      spans[i].style.background = (v >= 0 ? "rgba(214,39,40," : "rgba(31,119,180,") + a.toFixed(3) + ")";
      spans[i].title = "unit " + unit + ": " + (v / data.scale).toFixed(2);
    }
    for (var j = 0; j < buttons.length; j++) {
      buttons[j].classList.toggle("on", buttons[j].getAttribute("data-unit") === String(unit));
    }
  }
  select.addEventListener("change", function () { shade(Number(select.value)); });
  for (var k = 0; k < buttons.length; k++) {
    buttons[k].addEventListener("click", function (event) {
      var unit = event.currentTarget.getAttribute("data-unit");
      select.value = unit;
      shade(Number(unit));
    });
  }
  shade(Number(select.value));
})();
