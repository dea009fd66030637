from strop.cli import app

app(prog_name="strop")
