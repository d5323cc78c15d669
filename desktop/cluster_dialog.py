"""Adding an Xinference cluster: its address and how Ember logs in; Ember asks the cluster before keeping it.

The same core call as ``ember cluster add`` (:func:`engines.cluster.ops.add`), off
the GUI thread: a wrong address or password is said in the dialog and nothing is
kept; a cluster without authentication is kept with its warning shown.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLineEdit, QVBoxLayout, QWidget

from engines.cluster import diagnosis as cluster_diagnosis
from engines.cluster import ops
from engines.cluster.store import ClusterConfigError
from engines.cluster.xinference import ClusterError

from .bridge import run_async
from .widgets import error_label, muted_label, text_label

log = logging.getLogger(__name__)


class AddClusterDialog(QDialog):
    """Name, URL, an admin login (password in the keyring or a variable) or an API key's variable."""

    added = Signal(ops.Added)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Add a cluster")
        self.setMinimumWidth(560)
        self.result_added: ops.Added | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(text_label("An Xinference cluster (a supervisor with workers) runs models on other "
                                    "machines. Ember asks it what it is before adding it."))
        form = QFormLayout()
        self.name = QLineEdit(placeholderText="gpu-lab")
        self.url = QLineEdit(placeholderText="http://gpu-box:9997")
        self.user = QLineEdit(placeholderText="admin (to launch and stop models)")
        self.password = QLineEdit(echoMode=QLineEdit.EchoMode.Password, placeholderText="kept in the keyring")
        self.password_env = QLineEdit(placeholderText="or the variable that holds it, e.g. XINFERENCE_PASSWORD")
        self.key_env = QLineEdit(placeholderText="an API key's variable: chat only, e.g. XINFERENCE_KEY")
        for label, w in (("Name", self.name), ("Address", self.url), ("User", self.user),
                         ("Password", self.password), ("Password variable", self.password_env),
                         ("API key variable", self.key_env)):
            w.setAccessibleName(label)
            form.addRow(label, w)
        layout.addLayout(form)
        self.status = muted_label()
        self.status.hide()
        self.error = error_label()
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Add")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def submit(self) -> None:
        """Ask the cluster (off the GUI thread); accept when it answered, else say why."""
        values = {k: (w.text().strip() or None) for k, w in (("name", self.name), ("url", self.url),
                                                              ("user", self.user), ("password", self.password),
                                                              ("password_env", self.password_env),
                                                              ("key_env", self.key_env))}
        if not values["name"] or not values["url"]:
            self.error.setText("A cluster needs a name and an address.")
            self.error.show()
            return
        self.error.hide()
        self.status.setText(f"Asking {values['url']}\u2026")
        self.status.show()
        self.buttons.setEnabled(False)
        run_async(lambda: ops.add(values["name"], values["url"], values["user"], values["password"],
                                  values["password_env"], None, values["key_env"]),
                  self._added, self._failed, name="cluster-add", owner=self)

    def _added(self, added: ops.Added) -> None:
        self.result_added = added
        self.buttons.setEnabled(True)
        self.added.emit(added)
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.buttons.setEnabled(True)
        self.status.hide()
        if isinstance(exc, (ClusterError, ClusterConfigError)):
            d = cluster_diagnosis.diagnose_cluster_error(exc, cluster=self.name.text().strip())
            text = f"{d.title}. {d.explanation}"
        else:
            text = getattr(exc, "message", None) or str(exc)
        self.error.setText(text)
        self.error.show()
