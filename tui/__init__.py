"""``strop chat``: a Textual app for chatting with strop's agents and giving them feedback."""
