// Ticket pages: the reply box's image picker. Loaded before Alpine so it registers in time.
document.addEventListener("alpine:init", () => {
  // Images chosen for a reply. A file input replaces its list on every pick, so the picks are kept here and
  // written back into the input (a DataTransfer), which the form then sends; each can be removed again.
  Alpine.data("replyImages", (max) => ({
    items: [],
    max,
    add() {
      for (const file of this.$refs.input.files) {
        this.items.push({ file, url: URL.createObjectURL(file), bad: false });
      }
      this.sync(); // also after a cancelled pick, which empties the input
    },
    drop(index) {
      URL.revokeObjectURL(this.items[index].url);
      this.items.splice(index, 1);
      this.sync();
    },
    sync() {
      const list = new DataTransfer();
      for (const item of Alpine.raw(this.items)) list.items.add(item.file);
      this.$refs.input.files = list.files;
    },
    destroy() {
      for (const item of this.items) URL.revokeObjectURL(item.url);
    },
  }));
});
