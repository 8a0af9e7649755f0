/* The ML API token pages.
 *
 * No user-controlled text is ever read from a data-module-* attribute or inserted as
 * HTML here: the confirmation dialogs show the server's own (escaped) confirmation page.
 */

/* A form that is sent once: a second click or Enter while the first submission runs does nothing. */
this.ckan.module('mltokens-submit-once', function () {
  return {
    initialize: function () {
      mltokensSubmitOnce(this.el[0]);
    }
  };
});

function mltokensSubmitOnce(form) {
  form.addEventListener('submit', function (event) {
    if (form.dataset.mltokensSent) {
      event.preventDefault();
      return;
    }
    form.dataset.mltokensSent = '1';
    form.querySelectorAll('button[type=submit], input[type=submit]').forEach(function (button) {
      button.disabled = true;
      button.setAttribute('aria-disabled', 'true');
    });
  });
  // Back to a page kept by the browser: the form may be sent again (the server acts once per form anyway).
  window.addEventListener('pageshow', function (event) {
    if (event.persisted) {
      delete form.dataset.mltokensSent;
      form.querySelectorAll('button[type=submit], input[type=submit]').forEach(function (button) {
        button.disabled = false;
        button.removeAttribute('aria-disabled');
      });
    }
  });
}

/* A link to a confirmation page (revoke, revoke all, renew): the same page's content in a dialog.
 * Without JavaScript, or if the page cannot be fetched, the link opens the page itself. */
this.ckan.module('mltokens-confirm', function () {
  return {
    initialize: function () {
      this.el[0].addEventListener('click', this._onClick.bind(this));
    },

    _onClick: function (event) {
      event.preventDefault();
      var href = this.el[0].href;
      fetch(href, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
        .then(function (response) {
          if (!response.ok || response.redirected) { throw new Error('no confirmation page'); }
          return response.text();
        })
        .then(function (text) {
          var page = new DOMParser().parseFromString(text, 'text/html');
          var content = page.querySelector('.mltoken-confirm');
          if (!content) { throw new Error('no confirmation on the page'); }
          mltokensShowConfirmation(document.importNode(content, true));
        })
        .catch(function () { window.location.assign(href); });
    }
  };
});

function mltokensShowConfirmation(content) {
  var modalEl = document.getElementById('mltoken-confirm-modal');
  var body = modalEl.querySelector('.modal-body');
  body.replaceChildren(content);
  var modal = bootstrap.Modal.getOrCreateInstance(modalEl);
  content.querySelector('.mltoken-confirm-cancel').addEventListener('click', function (event) {
    event.preventDefault();
    modal.hide();
  });
  mltokensSubmitOnce(content.querySelector('form'));
  modalEl.addEventListener('shown.bs.modal', function () {
    var first = content.querySelector('input[type=text]') || content.querySelector('.mltoken-confirm-submit');
    first.focus();
  }, { once: true });
  modal.show();
}

/* The expiry: typing a date chooses "on the date:"; choosing a lifetime clears the date. */
this.ckan.module('mltokens-expiry', function () {
  return {
    initialize: function () {
      var select = this.el[0].querySelector('select');
      var date = this.el[0].querySelector('input[type=date]');
      date.addEventListener('input', function () {
        if (date.value) { select.value = 'date'; }
      });
      select.addEventListener('change', function () {
        if (select.value !== 'date') { date.value = ''; }
      });
    }
  };
});
