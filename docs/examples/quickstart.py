"""The quickstart example from docs/quickstart.rst, as one runnable script.

Run it with ``python docs/examples/quickstart.py``. It uses the database named by
``DATABASE_URL``; without one, ``chrononaut.testing.database_url()`` finds a local
PostgreSQL server. It creates the tables ``appuser`` and ``appuser_history`` and
drops them again at the end: point it at a scratch database.
"""

from flask import Flask

from chrononaut import (
    HiddenAttributeError,
    UntrackedAttributeError,
    Versioned,
    VersionedSQLAlchemy,
)
from chrononaut.testing import database_url

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = database_url()

# Instead of flask_sqlalchemy.SQLAlchemy(app):
db = VersionedSQLAlchemy(app)


class User(db.Model, Versioned):
    __tablename__ = "appuser"
    __chrononaut_untracked__ = ["login_count"]
    __chrononaut_hidden__ = ["password"]

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), unique=False)
    email = db.Column(db.String(255), unique=True)
    password = db.Column(db.Text())
    login_count = db.Column(db.Integer())


with app.app_context():
    db.create_all()  # creates appuser and appuser_history
    try:
        ada = User(name="Ada", email="ada@example.com", password="s3cret", login_count=0)
        db.session.add(ada)
        db.session.commit()

        # Signing in only touches an untracked column: no history, no new version.
        user = User.query.first()
        user.login_count += 1
        db.session.commit()
        assert user.version == 0 and user.versions() == []

        # Changing the email address is a tracked change.
        user.email = "ada@example.org"
        db.session.commit()
        assert user.version == 1

        # See whether the user has changed their email since they signed up.
        original_user_info = user.versions()[0]
        if user.email == original_user_info.email:
            print("User email matches!")
        else:
            print("The user has updated their email!")
        print(user.diff(original_user_info))  # what changed since then

        # History records never hold hidden or untracked values.
        try:
            print(original_user_info.password)
        except HiddenAttributeError:
            print("password is hidden")
        try:
            print(original_user_info.login_count)
        except UntrackedAttributeError:
            print("login_count is untracked")

        # Changing the password writes a history row, without the password.
        user.password = "n3w-s3cret"
        db.session.commit()
        latest = user.previous_version()
        print(latest.version, latest.change_info["hidden_cols_changed"])
    finally:
        db.session.remove()
        db.drop_all()
